//! `.env.sample` documents every setting the service reads, and its values are valid. The docs
//! document what the code has, and nothing it lacks: the settings (docs/configuration.md), the
//! metrics (docs/operations.md), the HTTP routes (docs/http-api.md); and the links between the
//! README and the docs files lead somewhere.

use std::collections::BTreeSet;
use std::path::Path;

/// A file of the repository, by its path from the repository's root.
fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The part of a source file before its unit tests.
fn code_of(path: &str) -> String {
    let src = read(path);
    src.split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn sample() -> Vec<(String, String)> {
    read(".env.sample")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn is_variable_name(s: &str) -> bool {
    s.len() > 3 && s.chars().all(|c| c.is_ascii_uppercase() || c == '_')
}

/// Every variable the code reads: named in src/config.rs (as a string literal in
/// UPPER_SNAKE_CASE), or an `env = "…"` fallback of an argument in src/cli.rs.
fn variables_in_config() -> BTreeSet<String> {
    let config = code_of("src/config.rs");
    let mut names: BTreeSet<String> = config
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| is_variable_name(s))
        .map(str::to_owned)
        .collect();
    let cli = code_of("src/cli.rs");
    for rest in cli.split("env = \"").skip(1) {
        let name = rest.split('"').next().unwrap_or_default();
        assert!(is_variable_name(name), "src/cli.rs: env = {name:?}");
        names.insert(name.to_owned());
    }
    assert!(names.len() > 20, "too few variables found: {names:?}");
    names
}

/// Splits a Markdown table row into its cells; a `|` inside a code span stays in its cell.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|').trim_end_matches('|');
    let (mut out, mut cell, mut in_code) = (Vec::new(), String::new(), false);
    for c in row.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => out.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_owned());
    out
}

/// The rows (as cells) of the one table in `doc` whose header row starts with `header`.
fn table(doc: &str, name: &str, header: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = doc.lines().map(str::trim).collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with(header))
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "{name}: expected one table with the header {header:?}"
    );
    let rows: Vec<Vec<String>> = lines[starts[0] + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| cells(l))
        .collect();
    assert!(!rows.is_empty(), "{name}: the table {header:?} is empty");
    rows
}

/// The code spans (`…`) of a piece of Markdown.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// The variables named in the first column of a `| variable | default | meaning |` table.
fn documented_variables(path: &str) -> BTreeSet<String> {
    table(&read(path), path, "| variable | default | meaning |")
        .iter()
        .flat_map(|row| {
            code_spans(&row[0])
                .filter(|s| is_variable_name(s))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_setting_is_in_env_sample_and_nothing_else() {
    let documented: BTreeSet<String> = sample().into_iter().map(|(k, _)| k).collect();
    assert_eq!(documented, variables_in_config());
}

#[test]
fn the_sample_values_parse() {
    let values = sample();
    let env = service_courier::config::Env(move |k: &str| {
        values.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    });
    env.settings().expect(".env.sample holds valid settings");
}

#[test]
fn every_setting_is_in_the_configuration_table_and_nothing_else() {
    let read_by_code = variables_in_config();
    let documented = documented_variables("docs/configuration.md");
    let undocumented: Vec<_> = read_by_code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&read_by_code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md's table lacks {undocumented:?}; it names {unknown:?}, which the \
         code does not read"
    );
}

#[test]
fn the_readme_names_only_settings_the_code_reads() {
    let documented = documented_variables("README.md");
    let read_by_code = variables_in_config();
    let unknown: Vec<_> = documented.difference(&read_by_code).collect();
    assert!(
        unknown.is_empty(),
        "README.md's settings name {unknown:?}, which the code does not read"
    );
}

/// Every metric the service exposes: the string literals `"courier_…"` of src/ops/metrics.rs.
fn metrics_in_code() -> BTreeSet<String> {
    let code = code_of("src/ops/metrics.rs");
    let names: BTreeSet<String> = code
        .split("\"courier_")
        .skip(1)
        .filter_map(|rest| {
            let end =
                rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))?;
            rest[end..]
                .starts_with('"')
                .then(|| format!("courier_{}", &rest[..end]))
        })
        .collect();
    assert!(names.len() > 10, "too few metrics found: {names:?}");
    names
}

/// The `courier_…` names in a piece of text (labels such as `{partition}` dropped).
fn metric_names(text: &str) -> Vec<String> {
    text.match_indices("courier_")
        .filter(|(i, _)| {
            !text[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_metric_is_in_the_operations_table_and_nothing_else() {
    let rows = table(
        &read("docs/operations.md"),
        "docs/operations.md",
        "| series | meaning |",
    );
    let listed: BTreeSet<String> = rows
        .iter()
        .flat_map(|row| {
            code_spans(&row[0])
                .flat_map(metric_names)
                .collect::<Vec<_>>()
        })
        .collect();
    let named_anywhere: BTreeSet<String> = rows
        .iter()
        .flat_map(|row| metric_names(&row.join(" | ")))
        .collect();
    let exposed = metrics_in_code();
    let undocumented: Vec<_> = exposed.difference(&listed).collect();
    let unknown: Vec<_> = named_anywhere.difference(&exposed).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/operations.md's metrics table lacks {undocumented:?}; it names {unknown:?}, which \
         src/ops/metrics.rs does not expose"
    );
}

/// A route: the method in capitals and the path, with every parameter written `{}`.
type Route = (String, String);

/// The routes `route` in src/api/routes.rs matches: each arm of its `match` reads
/// `([segment, …] | […], Method | Method) => …`, a segment being a string literal or a
/// binding (a path parameter).
fn routes_in_code() -> BTreeSet<Route> {
    let code = code_of("src/api/routes.rs");
    let body = code
        .split("fn route<")
        .nth(1)
        .expect("src/api/routes.rs has fn route")
        .split("match (parts.as_slice(), &method) {")
        .nth(1)
        .expect("fn route matches (parts.as_slice(), &method)");
    let mut routes = BTreeSet::new();
    for line in body.lines().map(str::trim) {
        if line.starts_with("_ =>") {
            break;
        }
        let Some(arm) = line
            .strip_prefix('(')
            .and_then(|l| l.split_once(") =>"))
            .map(|(arm, _)| arm)
        else {
            continue;
        };
        let (paths, methods) = arm
            .rsplit_once("],")
            .unwrap_or_else(|| panic!("src/api/routes.rs: cannot read the arm {line:?}"));
        let methods: Vec<String> = methods
            .split('|')
            .map(|m| match m.trim() {
                m @ ("Get" | "Head" | "Post" | "Put" | "Delete" | "Patch" | "Options") => {
                    m.to_ascii_uppercase()
                }
                other => panic!("src/api/routes.rs: unknown method {other:?} in {line:?}"),
            })
            .collect();
        for alternative in format!("{paths}]").split('|') {
            let segments = alternative
                .trim()
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or_else(|| panic!("src/api/routes.rs: cannot read the arm {line:?}"));
            let path: Vec<String> = segments
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "\"\"")
                .map(
                    |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(literal) => literal.to_owned(),
                        None if s.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                            "{}".into()
                        }
                        None => {
                            panic!("src/api/routes.rs: cannot read the segment {s:?} of {line:?}")
                        }
                    },
                )
                .collect();
            for method in &methods {
                routes.insert((method.clone(), format!("/{}", path.join("/"))));
            }
        }
    }
    assert!(routes.len() > 10, "too few routes found: {routes:?}");
    routes
}

/// `GET /courier/{id}` as a route; None for a code span that is not a method and a path.
fn route_of(span: &str) -> Option<Route> {
    let (method, path) = span.split_once(' ')?;
    let known = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    if !known.contains(&method) || !path.starts_with('/') || path.contains(' ') {
        return None;
    }
    let path: Vec<&str> = path
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                "{}"
            } else {
                s
            }
        })
        .collect();
    Some((method.to_owned(), path.join("/")))
}

/// Whether a concrete path (`/courier/1`) is one a route serves.
fn serves(routes: &BTreeSet<Route>, path: &str) -> bool {
    let given: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    routes.iter().any(|(_, route)| {
        let route: Vec<&str> = route.trim_end_matches('/').split('/').collect();
        route.len() == given.len()
            && route
                .iter()
                .zip(&given)
                .all(|(r, g)| r == g || (*r == "{}" && !g.is_empty()))
    })
}

#[test]
fn every_route_is_in_the_http_api_table_and_nothing_else() {
    let doc = read("docs/http-api.md");
    let served = routes_in_code();
    let listed: BTreeSet<Route> = table(&doc, "docs/http-api.md", "| method and path |")
        .iter()
        .flat_map(|row| code_spans(&row[0]).filter_map(route_of).collect::<Vec<_>>())
        .collect();
    // Anywhere in the page, not only in the table: a route named in prose exists too.
    let named_anywhere: BTreeSet<Route> = code_spans(&doc).filter_map(route_of).collect();
    let undocumented: Vec<_> = served.difference(&listed).collect();
    let unknown: Vec<_> = named_anywhere.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/http-api.md's routes table lacks {undocumented:?}; it names {unknown:?}, which \
         src/api/routes.rs does not serve"
    );
    // The curl examples (`$H/…`) ask for paths that are served.
    let asked: Vec<&str> = doc
        .split("$H/")
        .skip(1)
        .map(|rest| {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == '?')
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(asked.len() > 10, "too few examples found: {asked:?}");
    let unserved: Vec<_> = asked
        .iter()
        .filter(|p| !serves(&served, &format!("/{p}")))
        .collect();
    assert!(
        unserved.is_empty(),
        "docs/http-api.md's examples ask for {unserved:?}, which no route serves"
    );
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (code blocks skipped).
fn anchors(doc: &str) -> BTreeSet<String> {
    let mut in_code = false;
    doc.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            !in_code && l.starts_with('#')
        })
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn links_between_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let name = entry.expect("docs/ entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let readme = read("README.md");
    let mut broken = Vec::new();
    for page in &pages {
        let doc = read(page);
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for rest in doc.split("](").skip(1) {
            let target = rest.split(')').next().unwrap_or_default();
            if target.contains("://") || target.is_empty() {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                Path::new(page).to_path_buf()
            } else {
                dir.join(file)
            };
            let Ok(text) = std::fs::read(root.join(&file)) else {
                broken.push(format!("{page}: {target} (no such file)"));
                continue;
            };
            if !fragment.is_empty() && !anchors(&String::from_utf8_lossy(&text)).contains(fragment)
            {
                broken.push(format!("{page}: {target} (no such heading)"));
            }
        }
        if page != "README.md" && !readme.contains(&format!("]({page})")) {
            broken.push(format!("README.md: no link to {page}"));
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

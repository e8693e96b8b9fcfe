//! `.env.sample` documents every setting the service reads, and its values are valid.

use std::collections::BTreeSet;

fn sample() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.sample"))
        .expect(".env.sample exists");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Every variable named in src/config.rs (as a string literal in UPPER_SNAKE_CASE).
fn variables_in_config() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs"))
        .expect("src/config.rs");
    let code = src.split("#[cfg(test)]").next().unwrap_or_default();
    code.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.len() > 3 && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
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

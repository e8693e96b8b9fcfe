//! docker-compose.yaml and the Dockerfile, checked without a Docker engine (none runs here): the
//! YAML parses, every service of the stand is there and healthy-checked, the default Kafka and
//! ZooKeeper images are 3.x, the `kafka4` profile is Apache Kafka 4 in KRaft mode without
//! ZooKeeper, the `observability` profile provisions Prometheus and Grafana, every variable the
//! compose file uses is in .env.sample, and the image runs as non-root.

use std::collections::BTreeSet;

use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read("docker-compose.yaml")).expect("valid YAML");
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn service<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &doc["services"][name];
    assert!(!s.is_badvalue(), "service {name} is missing");
    s
}

fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

#[test]
fn every_service_of_the_stand_is_present() {
    let doc = compose();
    for name in [
        "zookeeper",
        "kafka",
        "kafka-init",
        "postgres",
        "service-order",
        "service-courier",
        "simulator",
    ] {
        service(&doc, name);
    }
}

/// Confluent Platform 7.x ships Apache Kafka 3.x; 8.x ships Kafka 4.x, which the crate can't
/// speak. Bitnami tags carry the Kafka version itself.
fn kafka_major(image: &str) -> u32 {
    let (name, tag) = image.rsplit_once(':').expect("a pinned tag");
    let major: u32 = tag
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("numeric tag");
    if name.starts_with("confluentinc/") {
        match major {
            7 => 3,
            8.. => 4,
            _ => 2,
        }
    } else {
        major
    }
}

#[test]
fn kafka_and_zookeeper_images_are_3x() {
    let doc = compose();
    for name in ["zookeeper", "kafka", "kafka-init"] {
        let image = text(&service(&doc, name)["image"], "image");
        assert_eq!(kafka_major(image), 3, "{name} uses {image}");
    }
    assert_eq!(kafka_major("confluentinc/cp-kafka:8.0.0"), 4);
    assert_eq!(kafka_major("bitnamilegacy/kafka:3.9.0"), 3);
}

#[test]
fn long_running_services_have_health_checks_and_the_order_matters() {
    let doc = compose();
    for name in [
        "zookeeper",
        "kafka",
        "postgres",
        "service-order",
        "service-courier",
    ] {
        let hc = &service(&doc, name)["healthcheck"]["test"];
        assert!(!hc.is_badvalue(), "{name} has no health check");
    }
    let courier = service(&doc, "service-courier");
    for (dep, condition) in [
        ("kafka", "service_healthy"),
        ("postgres", "service_healthy"),
        ("kafka-init", "service_completed_successfully"),
    ] {
        assert_eq!(
            text(&courier["depends_on"][dep]["condition"], dep),
            condition,
            "{dep}"
        );
    }
    assert_eq!(
        text(&courier["build"]["dockerfile"], "dockerfile"),
        "Dockerfile"
    );
    assert_eq!(text(&courier["env_file"][0]["path"], "env_file"), ".env");
    assert_eq!(
        text(&courier["environment"]["KAFKA_BROKERS"], "brokers"),
        "kafka:29092"
    );
}

/// The commit of service-order the course's stand uses.
const SERVICE_ORDER_COMMIT: &str = "4700d07";

#[test]
fn service_order_is_the_course_repository_on_8083() {
    let doc = compose();
    let order = service(&doc, "service-order");
    let context = text(&order["build"]["context"], "context");
    assert!(
        context.contains("github.com/Avito-courses/service-order"),
        "{context}"
    );
    // Pinned, never the moving HEAD: either a `#ref` fragment with the full SHA (the only
    // commit form a fragment takes), or the `commit` query, which takes the short one.
    let pinned = match context.split_once('#') {
        Some((_, fragment)) => {
            let sha = fragment.split(':').next().unwrap_or_default();
            sha.len() == 40
                && sha.starts_with(SERVICE_ORDER_COMMIT)
                && sha.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => context.split_once('?').is_some_and(|(_, query)| {
            query.split('&').any(|kv| {
                kv == format!("commit={SERVICE_ORDER_COMMIT}")
                    || kv == format!("checksum={SERVICE_ORDER_COMMIT}")
            })
        }),
    };
    assert!(
        pinned,
        "service-order is not pinned to {SERVICE_ORDER_COMMIT}: {context}"
    );
    assert_eq!(text(&order["ports"][0], "port"), "8083:8080");
    for var in ["KAFKA_BROKERS", "KAFKA_ORDER_TOPIC"] {
        assert!(
            !order["environment"][var].is_badvalue(),
            "service-order lacks {var}"
        );
    }
}

#[test]
fn postgres_gets_a_volume_and_no_init_script_and_topics_are_created() {
    let doc = compose();
    let volumes: Vec<&str> = service(&doc, "postgres")["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    // The service's migrations make the tables; an init script would make them without the
    // history that later migrations rely on.
    assert!(
        !volumes
            .iter()
            .any(|v| v.contains("docker-entrypoint-initdb.d")),
        "{volumes:?}"
    );
    assert!(volumes.iter().any(|v| v.starts_with("pgdata:")));
    assert!(!doc["volumes"]["pgdata"].is_badvalue());
    let init = format!("{:?}", service(&doc, "kafka-init")["command"]);
    assert!(
        init.contains("KAFKA_ORDER_TOPIC") && init.contains("--partitions 6"),
        "{init}"
    );
    assert!(init.contains("KAFKA_DLQ_TOPIC"), "{init}");
    let sim = service(&doc, "simulator");
    assert_eq!(text(&sim["profiles"][0], "profile"), "simulator");
}

#[test]
fn every_variable_the_compose_file_uses_is_in_env_sample() {
    let compose = read("docker-compose.yaml");
    let used: BTreeSet<&str> = compose
        .split("${")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
        })
        .collect();
    assert!(!used.is_empty());
    let sample = read(".env.sample");
    let defined: BTreeSet<&str> = sample
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let missing: Vec<_> = used.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "used in compose, missing in .env.sample: {missing:?}"
    );
}

#[test]
fn the_image_is_multi_stage_small_and_non_root() {
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    assert!(stages.len() >= 2, "multi-stage");
    let runtime = stages.last().expect("runtime stage");
    assert!(
        runtime.starts_with("debian:") && runtime.contains("-slim"),
        "{runtime}"
    );
    assert!(
        runtime.contains("COPY --from=build"),
        "only the binary is copied"
    );
    assert!(!runtime.contains("cargo"), "no toolchain at run time");
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "runs as {user}"
    );
}

#[test]
fn observability_profile_provisions_prometheus_and_grafana() {
    let doc = compose();
    let courier = service(&doc, "service-courier");
    assert_eq!(
        text(&courier["environment"]["HTTP_ADDR"], "HTTP_ADDR"),
        "0.0.0.0:8090"
    );
    let ports: Vec<&str> = courier["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .map(|p| text(p, "port"))
        .collect();
    assert!(
        ports.contains(&"8090:8090"),
        "API port not published: {ports:?}"
    );
    // 8080 is service-order's (inside its container; the course's stack on the host).
    assert!(
        !ports.iter().any(|p| p.starts_with("8080:")),
        "service-courier takes 8080: {ports:?}"
    );

    let mounts = |name: &str| -> Vec<(String, String)> {
        service(&doc, name)["volumes"]
            .as_vec()
            .expect("volumes")
            .iter()
            .map(|v| {
                let v = text(v, "volume");
                let mut parts = v.split(':');
                let host = parts.next().unwrap_or_default().trim_start_matches("./");
                (host.to_owned(), parts.next().unwrap_or_default().to_owned())
            })
            .collect()
    };
    for name in ["prometheus", "grafana"] {
        let s = service(&doc, name);
        assert_eq!(
            text(&s["profiles"][0], "profile"),
            "observability",
            "{name}"
        );
        assert!(
            !s["healthcheck"]["test"].is_badvalue(),
            "{name} has no health check"
        );
        // Every mounted file or folder exists in the repository.
        for (host, _) in mounts(name) {
            let path = format!("{}/{host}", env!("CARGO_MANIFEST_DIR"));
            assert!(
                std::path::Path::new(&path).exists(),
                "{name} mounts missing {host}"
            );
        }
    }
    let prom = mounts("prometheus");
    assert!(prom.contains(&(
        "deploy/prometheus/alerts.yml".into(),
        "/etc/prometheus/alerts.yml".into()
    )));
    // Prometheus scrapes the service's metrics port and loads the alerts where they are mounted.
    let config = read("deploy/prometheus/prometheus.yml");
    assert!(config.contains("service-courier:9464"));
    assert!(config.contains("/etc/prometheus/alerts.yml"));

    // Grafana gets the datasource the dashboard names, and the dashboard where the provider
    // looks for it.
    let grafana = mounts("grafana");
    assert!(grafana.contains(&(
        "deploy/grafana/provisioning".into(),
        "/etc/grafana/provisioning".into()
    )));
    let board_mount = grafana
        .iter()
        .find(|(host, _)| host == "deploy/grafana/service-courier.json")
        .map(|(_, inside)| inside.clone())
        .expect("the dashboard is mounted");
    let provider = read("deploy/grafana/provisioning/dashboards/service-courier.yml");
    let folder = board_mount
        .rsplit_once('/')
        .map(|(dir, _)| dir)
        .unwrap_or_default();
    assert!(provider.contains(&format!("path: {folder}")), "{provider}");
    let datasource = read("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        datasource.contains("uid: prometheus") && datasource.contains("http://prometheus:9090")
    );
    let board: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/service-courier.json")).expect("dashboard JSON");
    for panel in board["panels"].as_array().expect("panels") {
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{}",
            panel["title"]
        );
    }
}

/// Every service of the `kafka4` profile, and only those, carries the profile: a plain
/// `docker compose up` never starts them.
const KAFKA4_SERVICES: [&str; 3] = ["kafka4", "kafka4-init", "service-courier-kafka4"];

/// The value of environment variable `var` of a service, as text (numbers included).
fn env_text(service: &Yaml, var: &str) -> Option<String> {
    match &service["environment"][var] {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

#[test]
fn the_kafka4_profile_is_apache_kafka_4_in_kraft_mode_without_zookeeper() {
    let doc = compose();
    for name in KAFKA4_SERVICES {
        let profiles = format!("{:?}", service(&doc, name)["profiles"]);
        assert!(
            profiles.contains("\"kafka4\""),
            "{name}: profiles {profiles}"
        );
    }
    let kafka4 = service(&doc, "kafka4");
    for name in ["kafka4", "kafka4-init"] {
        let image = text(&service(&doc, name)["image"], "image");
        assert!(image.starts_with("apache/kafka:"), "{name} uses {image}");
        assert_eq!(kafka_major(image), 4, "{name} uses {image}");
    }
    // KRaft: one node that is broker and controller, with a controller listener and quorum.
    let roles = env_text(kafka4, "KAFKA_PROCESS_ROLES").expect("KAFKA_PROCESS_ROLES");
    let mut roles: Vec<&str> = roles.split(',').map(str::trim).collect();
    roles.sort_unstable();
    assert_eq!(roles, ["broker", "controller"]);
    let voters = env_text(kafka4, "KAFKA_CONTROLLER_QUORUM_VOTERS").expect("quorum voters");
    let node = env_text(kafka4, "KAFKA_NODE_ID").expect("KAFKA_NODE_ID");
    assert!(voters.starts_with(&format!("{node}@kafka4:")), "{voters}");
    let controller_port = voters.rsplit(':').next().expect("a port");
    let listeners = env_text(kafka4, "KAFKA_LISTENERS").expect("KAFKA_LISTENERS");
    assert!(
        listeners.contains(&format!("CONTROLLER://0.0.0.0:{controller_port}")),
        "{listeners}"
    );
    assert_eq!(
        env_text(kafka4, "KAFKA_CONTROLLER_LISTENER_NAMES").as_deref(),
        Some("CONTROLLER")
    );
    // The cluster id is what `kafka-storage random-uuid` prints: 16 bytes in unpadded base64url.
    let cluster = env_text(kafka4, "CLUSTER_ID").expect("CLUSTER_ID");
    assert!(
        cluster.len() == 22
            && cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "CLUSTER_ID {cluster}"
    );
    // No ZooKeeper anywhere in the profile.
    for name in KAFKA4_SERVICES {
        let s = service(&doc, name);
        assert!(env_text(s, "KAFKA_ZOOKEEPER_CONNECT").is_none(), "{name}");
        assert!(s["depends_on"]["zookeeper"].is_badvalue(), "{name}");
    }
    assert!(!kafka4["healthcheck"]["test"].is_badvalue());
    // The containers' address is the advertised internal listener, and the host's port is
    // published.
    let advertised = env_text(kafka4, "KAFKA_ADVERTISED_LISTENERS").expect("advertised");
    assert!(
        advertised.contains("INTERNAL://kafka4:29092"),
        "{advertised}"
    );
    assert!(
        advertised.contains("EXTERNAL://localhost:9094"),
        "{advertised}"
    );
    assert_eq!(text(&kafka4["ports"][0], "port"), "9094:9094");

    let init = format!("{:?}", service(&doc, "kafka4-init")["command"]);
    assert!(
        init.contains("kafka4:29092")
            && init.contains("KAFKA_ORDER_TOPIC")
            && init.contains("--partitions 6")
            && init.contains("KAFKA_DLQ_TOPIC"),
        "{init}"
    );
    let courier = service(&doc, "service-courier-kafka4");
    assert_eq!(
        text(&courier["environment"]["KAFKA_BROKERS"], "brokers"),
        "kafka4:29092"
    );
    for (dep, condition) in [
        ("kafka4", "service_healthy"),
        ("postgres", "service_healthy"),
        ("kafka4-init", "service_completed_successfully"),
    ] {
        assert_eq!(
            text(&courier["depends_on"][dep]["condition"], dep),
            condition,
            "{dep}"
        );
    }
    assert!(!courier["healthcheck"]["test"].is_badvalue());
    // Both services can run at once: no host port of one is the other's, and none is
    // service-order's.
    let host_ports = |s: &Yaml| -> Vec<String> {
        s["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .map(|p| {
                text(p, "port")
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let kafka4_ports = host_ports(courier);
    let default_ports = host_ports(service(&doc, "service-courier"));
    let order_ports = host_ports(service(&doc, "service-order"));
    for port in &kafka4_ports {
        assert!(
            !default_ports.contains(port) && !order_ports.contains(port),
            "host port {port} of service-courier-kafka4 is taken: {default_ports:?} {order_ports:?}"
        );
    }
    // Its HTTP API and operator's page, on 8091 from the host.
    assert_eq!(
        env_text(courier, "HTTP_ADDR").as_deref(),
        Some("0.0.0.0:8090")
    );
    let ports: Vec<&str> = courier["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .map(|p| text(p, "port"))
        .collect();
    assert!(ports.contains(&"8091:8090"), "{ports:?}");
}

#[test]
fn services_outside_the_kafka4_profile_never_use_it() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services");
    for (name, s) in services {
        let name = name.as_str().expect("a service name");
        if KAFKA4_SERVICES.contains(&name) {
            continue;
        }
        let deps = format!("{:?}", s["depends_on"]);
        assert!(
            !deps.contains("kafka4"),
            "{name} depends on the kafka4 profile: {deps}"
        );
        let brokers = format!("{:?}", s["environment"]["KAFKA_BROKERS"]);
        assert!(
            !brokers.contains("kafka4"),
            "{name} uses Kafka 4: {brokers}"
        );
    }
}

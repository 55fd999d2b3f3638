//! Loading, layering, validation and secrets of the configuration.

use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn embedded_default_equals_the_struct_default() {
    let loaded = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn layers_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(
        &file,
        "shards = 3\n[limits]\nmax_body = 100\nmax_in_flight = 8\n",
    )
    .unwrap();
    let config = Config::load(
        Some(&file),
        env(&[
            ("CHATD_LIMITS_MAX_BODY", "200"),
            ("CHATD_LISTEN", "0.0.0.0:5000"),
            ("OTHER", "x"),
        ]),
        &Overrides {
            shards: Some(2),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(config.shards, 2);
    assert_eq!(config.limits.max_body, 200);
    assert_eq!(config.limits.max_in_flight, 8);
    assert_eq!(config.listen, "0.0.0.0:5000".parse().unwrap());
}

#[test]
fn mistakes_are_reported_not_ignored() {
    let unknown_env = Config::load(
        None,
        env(&[("CHATD_LIMITS_MAX_BODDY", "1")]),
        &Overrides::default(),
    );
    assert!(
        unknown_env
            .unwrap_err()
            .to_string()
            .contains("CHATD_LIMITS_MAX_BODDY")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(&file, "[limits]\nmax_bodyy = 1\n").unwrap();
    let err = Config::load(Some(&file), Vec::new(), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("max_bodyy"), "{err}");

    let bad = Config::load(
        None,
        env(&[
            ("CHATD_LIMITS_MAX_BODY", "100000"),
            ("CHATD_TLS_CERT", "/x.pem"),
            ("CHATD_LOG", "chatd=loud"),
        ]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("max_body") && bad.contains("tls.cert") && bad.contains("log must be"),
        "{bad}"
    );
}

#[test]
fn the_dedupe_window_holds_a_devices_unanswered_sends() {
    let config = Config::parse("a.toml", "[storage]\ndedupe_window = 64\n").unwrap();
    assert_eq!(config.storage.dedupe_window, 64);
    let err = Config::parse("b.toml", "[storage]\ndedupe_window = 63\n").unwrap_err();
    assert!(err.to_string().contains("dedupe_window"), "{err}");
    let err = Config::parse("c.toml", "[storage]\ndedupe_cache = 100\n").unwrap_err();
    assert!(err.to_string().contains("dedupe_cache"), "{err}");
    let err = Config::parse("d.toml", "[storage\n").unwrap_err();
    assert!(err.to_string().starts_with("d.toml: "), "{err}");
}

#[test]
fn data_dir_falls_back_to_systemd_then_cwd() {
    let config = Config::default();
    assert_eq!(config.data_dir(None), PathBuf::from("chatd-data"));
    assert_eq!(
        config.data_dir(Some("/var/lib/chatd:/x")),
        PathBuf::from("/var/lib/chatd")
    );
    let set = Config {
        data_dir: "/srv/chat".into(),
        ..Config::default()
    };
    assert_eq!(
        set.data_dir(Some("/var/lib/chatd")),
        PathBuf::from("/srv/chat")
    );
}

#[test]
fn secrets_do_not_print() {
    let key = KeyConfig {
        id: "k".into(),
        secret: Secret::inline("ab".repeat(32)),
    };
    assert!(!format!("{key:?}").contains("abab"));
}

#[test]
fn keys_and_the_broker_url_come_from_credentials() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(
        creds.path().join("token-key"),
        format!("{}\n", "cd".repeat(32)),
    )
    .unwrap();
    std::fs::write(creds.path().join("amqp"), "amqp://u:p@127.0.0.1:5672/%2f").unwrap();
    let file = creds.path().join("chatd.toml");
    std::fs::write(
        &file,
        "[[auth.keys]]\nid = \"k1\"\nsecret = { credential = \"token-key\" }\n\
         [bridge]\namqp_url = { credential = \"amqp\" }\n",
    )
    .unwrap();
    let dir = creds.path().display().to_string();
    let config = Config::load(
        Some(&file),
        env(&[("CREDENTIALS_DIRECTORY", &dir)]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.auth.keys[0].secret.expose(), "cd".repeat(32));
    assert!(config.bridge.enabled());
    // Without systemd's variable the file is refused, naming the field and the cause.
    let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("auth.keys[0].secret") && text.contains("CREDENTIALS_DIRECTORY"),
        "{text}"
    );
    // A resolved secret is still validated: a short key is refused.
    std::fs::write(creds.path().join("token-key"), "abcd").unwrap();
    let err = Config::load(
        Some(&file),
        env(&[("CREDENTIALS_DIRECTORY", &dir)]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
}

#[test]
fn cluster_server_ids_and_secrets_load_from_file_and_environment() {
    let secret = "ab".repeat(32);
    let config = Config::load(
        None,
        env(&[
            ("CHATD_CLUSTER_SERVER_ID", "0x00000000000000a1"),
            ("CHATD_CLUSTER_SECRET", &secret),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    // Unquoted, TOML reads the id as an integer; it comes back as written.
    assert_eq!(config.cluster.server_id, "0x00000000000000a1");
    assert_eq!(config.cluster.secret.expose(), secret);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(
        &file,
        "[cluster]\nserver_id = \"0xfedcba9876543210\"\nsecret = \"12\"\n",
    )
    .unwrap();
    match Config::load(Some(&file), Vec::new(), &Overrides::default()) {
        Err(Error::Invalid(problems)) => assert_eq!(
            problems,
            vec!["cluster.secret must be empty or 64 hex digits (32 bytes)".to_owned()]
        ),
        other => panic!("{other:?}"),
    }
    std::fs::write(&file, "[cluster]\nserver_id = \"0xFEDCBA9876543210\"\n").unwrap();
    assert!(Config::load(Some(&file), Vec::new(), &Overrides::default()).is_err());
}

#[test]
fn an_accepted_secret_needs_a_secret_other_than_itself() {
    let (secret, other) = ("ab".repeat(32), "cd".repeat(32));
    let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
    let config = load(&[
        ("CHATD_CLUSTER_SECRET", &secret),
        ("CHATD_CLUSTER_ACCEPTED_SECRET", &other),
    ])
    .unwrap();
    assert_eq!(config.cluster.accepted_secret.expose(), other);
    // A secret like the others: here from a variable, and never printed.
    let config = load(&[
        ("CHATD_CLUSTER_SECRET", &secret),
        (
            "CHATD_CLUSTER_ACCEPTED_SECRET",
            "{ env = \"OLD_CLUSTER_SECRET\" }",
        ),
        ("OLD_CLUSTER_SECRET", &other),
    ])
    .unwrap();
    assert_eq!(config.cluster.accepted_secret.expose(), other);
    assert!(!format!("{config:?}").contains(&other), "never printed");
    let needs = "cluster.accepted_secret needs cluster.secret, and another secret than it";
    for (vars, problem) in [
        (
            vec![("CHATD_CLUSTER_ACCEPTED_SECRET", other.as_str())],
            needs,
        ),
        (
            vec![
                ("CHATD_CLUSTER_SECRET", secret.as_str()),
                ("CHATD_CLUSTER_ACCEPTED_SECRET", &secret.to_uppercase()),
            ],
            needs,
        ),
        (
            vec![
                ("CHATD_CLUSTER_SECRET", secret.as_str()),
                ("CHATD_CLUSTER_ACCEPTED_SECRET", "abcd"),
            ],
            "cluster.accepted_secret must be empty or 64 hex digits (32 bytes)",
        ),
    ] {
        match load(&vars) {
            Err(Error::Invalid(problems)) => assert_eq!(problems, vec![problem.to_owned()]),
            other => panic!("{vars:?}: {other:?}"),
        }
    }
}

#[test]
fn cluster_partitions_are_at_most_256() {
    let load = |n: &str| {
        Config::load(
            None,
            env(&[("CHATD_CLUSTER_PARTITIONS", n)]),
            &Overrides::default(),
        )
    };
    assert_eq!(load("256").unwrap().cluster.partitions, 256);
    match load("257") {
        Err(Error::Invalid(problems)) => assert_eq!(
            problems,
            vec![
                "cluster.partitions must be at most 256 (a partition is the top byte of an id)"
                    .to_owned()
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cluster_node_needs_partitions_a_name_and_a_shared_directory() {
    let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
    let etcd = ("CHATD_CLUSTER_ETCD", "[\"http://127.0.0.1:2379\"]");
    match load(&[etcd]) {
        Err(Error::Invalid(problems)) => assert_eq!(
            problems,
            vec![
                "cluster.etcd needs cluster.partitions (what the nodes share)".to_owned(),
                "cluster.etcd needs cluster.node, this node's name".to_owned(),
                "cluster.etcd needs cluster.partitions_dir, an absolute path every node of the \
                 cluster reaches (DATA_DIR/partitions is this node's alone)"
                    .to_owned(),
            ]
        ),
        other => panic!("{other:?}"),
    }
    let node = [
        etcd,
        ("CHATD_CLUSTER_PARTITIONS", "4"),
        ("CHATD_CLUSTER_NODE", "a"),
        ("CHATD_CLUSTER_PARTITIONS_DIR", "/srv/partitions"),
    ];
    let config = load(&node).unwrap();
    assert_eq!(config.cluster.etcd, ["http://127.0.0.1:2379"]);
    assert_eq!(
        (config.cluster.name.as_str(), config.cluster.lease_secs),
        ("chatd", 2)
    );
    // etcd's user and password go together; the password is a secret (here from a variable).
    let user = [&node[..], &[("CHATD_CLUSTER_ETCD_USER", "chatd")]].concat();
    match load(&user) {
        Err(Error::Invalid(problems)) => assert_eq!(
            problems,
            ["cluster.etcd_user and cluster.etcd_password go together"]
        ),
        other => panic!("{other:?}"),
    }
    let password = [
        &user[..],
        &[
            ("CHATD_CLUSTER_ETCD_PASSWORD", "{ env = \"ETCD_PASSWORD\" }"),
            ("ETCD_PASSWORD", "s3cret"),
        ],
    ]
    .concat();
    let config = load(&password).unwrap();
    assert_eq!(config.cluster.etcd_password.expose(), "s3cret");
    assert!(!format!("{config:?}").contains("s3cret"), "never printed");
    // TLS: https:// with a CA, http:// without; a client certificate with its key and a CA.
    let https = ("CHATD_CLUSTER_ETCD", "[\"https://127.0.0.1:2379\"]");
    let tls = |vars: &[(&str, &str)]| {
        let all = [&node[1..], &[https], vars].concat();
        match load(&all) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid(problems)) => problems,
            Err(other) => panic!("{other:?}"),
        }
    };
    let scheme = "cluster.etcd URLs are https:// with cluster.etcd_ca (TLS), http:// without";
    assert_eq!(tls(&[]), [scheme]);
    assert!(tls(&[("CHATD_CLUSTER_ETCD_CA", "/etc/chatd/etcd-ca.pem")]).is_empty());
    let client = "cluster.etcd_cert and cluster.etcd_key go together, and need cluster.etcd_ca";
    assert_eq!(
        tls(&[
            ("CHATD_CLUSTER_ETCD_CA", "/etc/chatd/etcd-ca.pem"),
            ("CHATD_CLUSTER_ETCD_CERT", "/etc/chatd/etcd.pem"),
        ]),
        [client]
    );
    assert!(
        tls(&[
            ("CHATD_CLUSTER_ETCD_CA", "/etc/chatd/etcd-ca.pem"),
            ("CHATD_CLUSTER_ETCD_CERT", "/etc/chatd/etcd.pem"),
            ("CHATD_CLUSTER_ETCD_KEY", "/etc/chatd/etcd-key.pem"),
        ])
        .is_empty()
    );
    let plain = [
        &node[..],
        &[("CHATD_CLUSTER_ETCD_CA", "/etc/chatd/etcd-ca.pem")],
    ]
    .concat();
    assert!(matches!(load(&plain), Err(Error::Invalid(p)) if p == [scheme]));
}

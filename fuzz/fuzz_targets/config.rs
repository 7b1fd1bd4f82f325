//! Config text: a node's `node.toml` and a cluster file, as an operator
//! writes them.
//!
//! The input, when it is UTF-8, goes to `NodeConfig::parse` (TOML, path
//! resolution, validation) and to `ClusterSpec::parse`. Neither may panic.
//! Properties checked on what is accepted:
//! - a node config written back with `to_toml` parses again to an equal
//!   config (what `ferry cluster` and operators rely on when a config is
//!   generated or rewritten);
//! - every node config a valid cluster file generates (`node_configs`) is
//!   written by `to_toml` as text that `NodeConfig::parse` accepts, i.e. the
//!   `node.toml` files `ferry cluster up` writes load;
//! - a task argument (the input as a template) is checked and substituted
//!   without panicking, and a template that passes the check substitutes
//!   with every variable set.
#![no_main]

use std::path::Path;

use ferry::cluster::spec::ClusterSpec;
use ferry::config::NodeConfig;
use ferry::tasks::Vars;
use libfuzzer_sys::fuzz_target;

const BASE: &str = "/fuzz/base";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = Path::new(BASE);

    let _ = Vars::default().substitute(text);
    if Vars::check(text, true).is_ok() {
        let mut all = Vars::default();
        for (name, _) in ferry::tasks::vars::NAMES {
            all.set(name, "v");
        }
        all.substitute(text).expect("a checked template substitutes when every variable is set");
    }

    if let Ok(cfg) = NodeConfig::parse(text, "fuzz.toml", base) {
        let written = cfg.to_toml();
        match NodeConfig::parse(&written, "rewritten.toml", base) {
            Ok(again) => assert_eq!(again, cfg, "config changed through to_toml:\n{written}"),
            Err(e) => panic!("a valid config written by to_toml does not parse again: {e}\n{written}"),
        }
    }

    if let Ok(spec) = ClusterSpec::parse(text, "fuzz-cluster.toml") {
        for cfg in spec.node_configs() {
            let written = cfg.to_toml();
            if let Err(e) = NodeConfig::parse(&written, "node.toml", base) {
                panic!("cluster file generates a node config that does not load: {e}\n{written}");
            }
        }
        for (i, _) in spec.nodes.iter().enumerate() {
            let _ = (spec.quic_addr(i), spec.api_addr(i));
        }
    }
});

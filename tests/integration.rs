//! The integration tests, in one binary: each module is one behaviour of the real `ringkv`
//! binary (or of the client and tools against it), named for what it checks. One binary links
//! once where a binary per file linked the whole node sixty-odd times, most of a CI build.
//!
//! At most two tests run at once ([`common::test_slot`]): many start several nodes, and more
//! would compete for the machine's two cores.
//!
//! Cargo no longer finds the files under `tests/` by itself (`autotests = false`): a new one
//! needs its `mod` line below, and [`every_test_file_is_a_module`] fails until it has one.

mod common;

mod auth_clients_need_a_password;
mod bench_engine_shards;
mod bench_load_and_run_against_server;
mod bench_workload_e;
mod cli_consistency_levels_across_a_cluster;
mod cli_exit_codes_and_output;
mod cli_scan_prints_a_range;
mod cli_status_and_ring_describe_the_cluster;
mod client_async_times_out_unanswered_requests;
mod client_blocking_serves_every_operation;
mod client_concurrent_first_requests_keep_their_connection;
mod client_glommio_serves_every_operation;
mod client_reconnects_after_server_restart;
mod client_refuses_limits_with_the_servers_error;
mod client_routes_each_key_to_its_owning_shard;
mod client_routes_keys_to_replicas;
mod client_scan_pages_through_a_range;
mod client_tokio_serves_every_operation;
mod cluster_anti_entropy_restores_a_lost_table;
mod cluster_anti_entropy_restores_a_wiped_replica;
mod cluster_compare_and_swap_is_linearizable_across_replicas;
mod cluster_deletes_made_during_an_outage_stay_deleted;
mod cluster_hints_replay_to_a_returning_replica;
mod cluster_hints_stay_bounded_in_a_long_outage;
mod cluster_hints_survive_a_killed_holder;
mod cluster_joining_node_restores_its_ranges_before_serving_reads;
mod cluster_new_node_serves_only_after_joining;
mod cluster_peers_need_the_cluster_secret;
mod cluster_quorum_across_three_nodes;
mod cluster_refuses_a_second_node_with_a_taken_id;
mod cluster_survives_a_stopped_replica;
mod metrics_count_hints_read_repairs_and_anti_entropy;
mod metrics_port_requires_its_bearer_token;
mod metrics_port_serves_https_with_the_node_certificate;
mod metrics_port_without_a_token_warns_when_clients_authenticate;
mod metrics_scrape_counts_operations;
mod metrics_scrape_shows_figures_changed_just_before_it;
mod resp_auth_answers_as_redis_does;
mod resp_pipelined_sets_of_one_key_land_in_order;
mod resp_pipelines_in_order_and_refuses_hostile_requests;
mod resp_reads_of_writes_not_yet_durable_wait;
mod resp_redis_cli_and_benchmark;
mod resp_redis_py_serves_every_command;
mod resp_ttl_and_mset_across_a_three_node_cluster;
mod ringkv_serve_check_config;
mod ringkv_serve_help_documents_cluster_options;
mod ringkv_serve_help_documents_every_option;
mod server_answers_overloaded_when_in_flight_window_is_full;
mod server_bounds_request_memory_under_hostile_clients;
mod server_closes_connection_on_hostile_frames;
mod server_closes_peer_links_on_hostile_frames;
mod server_closes_slow_and_idle_connections;
mod server_closes_slow_peer_links;
mod server_counts_a_batch_as_its_operations_in_flight;
mod server_finishes_in_flight_requests_on_sigterm;
mod server_forwards_requests_for_other_shards;
mod server_keeps_acknowledged_writes_after_sigkill;
mod server_keeps_data_across_clean_restart;
mod server_pipelined_reads_see_the_writes_before_them;
mod server_pipelines_requests_out_of_order;
mod server_reads_are_answered_only_once_durable;
mod server_reads_config_file_under_flags;
mod server_refuses_changed_placement;
mod server_refuses_second_start_on_same_data_dir;
mod server_refuses_to_listen_beyond_loopback_unauthenticated;
mod server_refuses_writes_on_a_full_disk_and_resumes;
mod server_rejects_oversized_key_and_value;
mod server_scan;
mod server_serves_every_operation;
mod systemd_unit_is_complete_and_verifies;
mod tls_cluster_replicates_over_mutual_tls;
mod tls_serves_clients_on_every_port;

/// Every file under a crate's `tests/` is compiled into that crate's `integration` binary (this
/// one, and those of the crates whose `tests/integration.rs` gathers their tests the same way):
/// a file left out would never run.
#[test]
fn every_test_file_is_a_module() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crates = vec![workspace.to_path_buf()];
    for entry in std::fs::read_dir(workspace).unwrap() {
        let path = entry.unwrap().path();
        if path.join("Cargo.toml").is_file() && path.join("tests/integration.rs").is_file() {
            crates.push(path);
        }
    }
    assert!(crates.len() > 1, "no crate besides the root gathers its tests in tests/integration.rs");
    let mut missing = Vec::new();
    for crate_directory in crates {
        let directory = crate_directory.join("tests");
        let root = std::fs::read_to_string(directory.join("integration.rs")).unwrap();
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            let (Some(stem), Some("rs")) = (
                path.file_stem().and_then(|stem| stem.to_str()),
                path.extension().and_then(|ext| ext.to_str()),
            ) else {
                continue;
            };
            if stem != "integration" && !root.contains(&format!("\nmod {stem};\n")) {
                missing.push(path.strip_prefix(workspace).unwrap().display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "test files without a `mod` line in their crate's tests/integration.rs: {missing:?}"
    );
}

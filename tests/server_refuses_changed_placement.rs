//! A restart with another `--vnodes-per-shard` or `--node-id` than the data directory was
//! written with is refused with a message naming the setting and both values, and the data is
//! still there after a restart with the recorded settings.

use crate::common;

use common::{run_to_exit, serve_args, Server};

#[test]
fn server_refuses_changed_placement() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mut server = Server::start(&data_dir);
    server.client().put(b"placed", b"with 16 vnodes per shard");
    assert!(server.terminate().success(), "{}", server.log());

    let mut args = serve_args(&data_dir, server.client_port);
    args.extend(["--vnodes-per-shard".to_string(), "8".to_string()]);
    let (status, output) = run_to_exit(&args);
    assert!(!status.success(), "the server started with another vnode count:\n{output}");
    assert!(output.contains("vnodes_per_shard = 16"), "{output}");
    assert!(output.contains("vnodes_per_shard = 8"), "{output}");
    assert!(output.contains("--vnodes-per-shard 16"), "{output}");

    let mut args = serve_args(&data_dir, server.client_port);
    args.extend(["--node-id".to_string(), "5".to_string()]);
    let (status, output) = run_to_exit(&args);
    assert!(!status.success(), "the server started with another node id:\n{output}");
    assert!(output.contains("node_id = 0") && output.contains("node_id = 5"), "{output}");

    server.restart();
    assert_eq!(server.client().get_value(b"placed").as_deref(), Some(&b"with 16 vnodes per shard"[..]));
}

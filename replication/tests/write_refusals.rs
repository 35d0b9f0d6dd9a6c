//! A write that replicas refuse (clock skew, a full disk) so that its consistency level can no
//! longer be met: the coordinator says it did not happen only when every replica answered and
//! none applied it; otherwise its outcome is unknown, since the replicas that applied it (or
//! have not answered yet) serve it to later reads.

use bytes::Bytes;
use ringkv_replication::coordinator::Output;
use ringkv_replication::{
    replica, Coordinator, CoordinatorConfig, CoordinatorError, CoordinatorReply, Target,
};
use ringkv_wire::peer::{PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerValue};

const NOW_MS: u64 = 1_700_000_000_000;

fn target(node_id: u16) -> Target {
    Target { node_id, shard: 0 }
}

/// Starts a write to nodes 1–3 needing `required` acks; returns the coordinator and the message
/// sent to each node.
fn start(required: usize) -> (Coordinator, Vec<(Target, PeerEnvelope)>) {
    let mut coordinator = Coordinator::new(CoordinatorConfig {
        node_id: 1,
        shard: 0,
        replica_timeout_ms: 1_000,
        pending_max: 8,
    });
    let entry = PeerEntry {
        version: 1 << 22,
        value: PeerValue::Live { data: Bytes::from_static(b"value"), expires_at_ms: None },
    };
    let targets = [target(1), target(2), target(3)];
    let mut out = Vec::new();
    coordinator.write(NOW_MS, Bytes::from_static(b"key"), entry, &targets, required, &mut out).unwrap();
    let sent = out
        .into_iter()
        .filter_map(|output| match output {
            Output::Send { to, envelope } => Some((to, envelope)),
            Output::Reply { .. } => panic!("answered before any replica did"),
            _ => None,
        })
        .collect();
    (coordinator, sent)
}

fn refused(request: &PeerEnvelope) -> PeerEnvelope {
    replica::refusal(
        request,
        PeerFailure { code: PeerErrorCode::ClockSkew, message: "the version is 2000ms ahead".into() },
    )
}

/// Delivers `answer` from `from`; the reply, if the write finished.
fn deliver(coordinator: &mut Coordinator, from: Target, answer: PeerEnvelope) -> Option<CoordinatorReply> {
    let mut out = Vec::new();
    coordinator.on_reply(from, answer, &mut out);
    out.into_iter().find_map(|output| match output {
        Output::Reply { reply, .. } => Some(reply),
        _ => None,
    })
}

#[test]
fn a_write_refused_by_every_replica_did_not_happen() {
    let (mut coordinator, sent) = start(1);
    assert_eq!(deliver(&mut coordinator, sent[0].0, refused(&sent[0].1)), None);
    assert_eq!(deliver(&mut coordinator, sent[1].0, refused(&sent[1].1)), None);
    match deliver(&mut coordinator, sent[2].0, refused(&sent[2].1)) {
        Some(CoordinatorReply::Failed(CoordinatorError::ReplicasFailed {
            acks: 0,
            required: 1,
            failure,
        })) => {
            assert_eq!(failure.code, PeerErrorCode::ClockSkew)
        }
        other => panic!("expected a clean failure, got {other:?}"),
    }
}

#[test]
fn a_write_one_replica_applied_is_indeterminate() {
    let (mut coordinator, sent) = start(3);
    assert_eq!(deliver(&mut coordinator, sent[0].0, replica::applied(&sent[0].1, Ok(()))), None);
    match deliver(&mut coordinator, sent[1].0, refused(&sent[1].1)) {
        Some(CoordinatorReply::Failed(CoordinatorError::WriteIndeterminate {
            acks: 1, required: 3, ..
        })) => {}
        other => panic!("expected an indeterminate write, got {other:?}"),
    }
}

#[test]
fn a_write_refused_while_replicas_have_not_answered_is_indeterminate() {
    // QUORUM of 3: two refusals make 2 acks impossible, but the third replica may still apply it.
    let (mut coordinator, sent) = start(2);
    assert_eq!(deliver(&mut coordinator, sent[1].0, refused(&sent[1].1)), None);
    let reply = deliver(&mut coordinator, sent[2].0, refused(&sent[2].1));
    match &reply {
        Some(CoordinatorReply::Failed(
            error @ CoordinatorError::WriteIndeterminate { acks: 0, required: 2, .. },
        )) => {
            assert!(error.to_string().contains("may have been applied"), "{error}");
        }
        other => panic!("expected an indeterminate write, got {other:?}"),
    }
    // The late ack changes nothing: the request is finished.
    assert_eq!(deliver(&mut coordinator, sent[0].0, replica::applied(&sent[0].1, Ok(()))), None);
}

#[test]
fn a_write_whose_replica_storage_failed_is_indeterminate() {
    // The replica's sync failed after the write reached its memtable: it may serve it.
    let (mut coordinator, sent) = start(1);
    let storage_failed = |request: &PeerEnvelope| {
        replica::applied(
            request,
            Err(PeerFailure { code: PeerErrorCode::StorageFailed, message: "fdatasync failed".into() }),
        )
    };
    assert_eq!(deliver(&mut coordinator, sent[0].0, storage_failed(&sent[0].1)), None);
    assert_eq!(deliver(&mut coordinator, sent[1].0, refused(&sent[1].1)), None);
    match deliver(&mut coordinator, sent[2].0, refused(&sent[2].1)) {
        Some(CoordinatorReply::Failed(CoordinatorError::WriteIndeterminate {
            acks: 0, required: 1, ..
        })) => {}
        other => panic!("expected an indeterminate write, got {other:?}"),
    }
}

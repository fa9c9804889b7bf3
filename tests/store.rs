//! The Redis state scripts, against the real Redis.
mod common;

use chrono::Utc;
use common::TestEnv;
use escalator::contract::{ExternalKind, Mode, ProviderKind};
use escalator::error::InfraError;
use escalator::store::{
    Admission, Claim, ConversationRecord, ConversationStatus, ExternalRef, Lease, PARKED_TTL_SECS,
    Store,
};
use std::time::Duration;

fn claim(owner: &str) -> Claim {
    Claim {
        owner: owner.to_string(),
        ttl: Duration::from_secs(20),
        overdue_grace: Duration::from_secs(60),
    }
}

/// Begin, and give the lease straight back (the message was parked or waits).
async fn begin_admission(store: &Store, conv: &str, id: &str) -> Admission {
    let b = store.begin("acme", conv, id, &claim("w1")).await.unwrap();
    if let Some(lease) = &b.lease {
        store.release(lease).await.unwrap();
    }
    b.admission
}

async fn take(store: &Store, conv: &str, id: &str, claim: &Claim) -> Lease {
    let b = store.begin("acme", conv, id, claim).await.unwrap();
    assert!(matches!(b.admission, Admission::Proceed | Admission::Head));
    b.lease.expect("a lease")
}

fn record(conv: &str) -> ConversationRecord {
    ConversationRecord {
        org_id: "acme".into(),
        conversation_id: conv.into(),
        provider: ProviderKind::Zendesk,
        mode: Mode::Ticket,
        status: ConversationStatus::Escalated,
        external: ExternalRef {
            kind: ExternalKind::ZendeskTicket,
            id: "7".into(),
            number: None,
            url: "https://acme.zendesk.com/agent/tickets/7".into(),
            requester_id: Some("9000".into()),
        },
        fallback_reason: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        live: None,
    }
}

async fn ttl(env: &TestEnv, key: &str) -> i64 {
    let store = env.store().await;
    let mut c = store.connection();
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn parked_list_lives_as_long_as_its_head_keeps_coming_back() {
    let env = TestEnv::new("store-park").await;
    let store = env.store().await;
    let list = format!("{}:conv:{{acme:c1}}:parked", env.settings.key_prefix);
    assert_eq!(
        begin_admission(&store, "c1", "m1").await,
        Admission::Proceed
    );
    assert!(
        store.park("acme", "c1", "m1", None).await.unwrap(),
        "m1 is the head"
    );
    assert!(ttl(&env, &list).await > PARKED_TTL_SECS - 5);

    // Age the list; a follower queues up but does not extend its life.
    let mut c = store.connection();
    let _: () = redis::cmd("EXPIRE")
        .arg(&list)
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(begin_admission(&store, "c1", "m2").await, Admission::Wait);
    assert!(ttl(&env, &list).await <= 100);
    assert_eq!(begin_admission(&store, "c1", "m1").await, Admission::Head);
    store.park("acme", "c1", "m1", None).await.unwrap();
    assert!(
        ttl(&env, &list).await > PARKED_TTL_SECS - 5,
        "the head refreshed it"
    );

    // The head finishes: the follower is next.
    let lease = take(&store, "c1", "m1", &claim("w1")).await;
    store.finish(&lease, "m1", true).await.unwrap();
    assert_eq!(begin_admission(&store, "c1", "m2").await, Admission::Head);
    assert!(
        store
            .begin("acme", "c1", "m1", &claim("w1"))
            .await
            .unwrap()
            .done
    );

    // A lost head: once the list expires, followers run.
    let lease = take(&store, "c1", "m2", &claim("w1")).await;
    store.finish(&lease, "m2", false).await.unwrap();
    store.park("acme", "c1", "lost-head", None).await.unwrap();
    assert_eq!(begin_admission(&store, "c1", "m3").await, Admission::Wait);
    let _: () = redis::cmd("DEL")
        .arg(&list)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        begin_admission(&store, "c1", "m3").await,
        Admission::Proceed
    );
    env.cleanup().await;
}

#[tokio::test]
async fn outbound_seqs_are_assigned_once_and_records_saved() {
    let env = TestEnv::new("store-commit").await;
    let store = env.store().await;
    let rec = record("c2");
    let lease = take(&store, "c2", "m1", &claim("w1")).await;
    let key = |cause: &str, t: &str| format!("{cause}/{t}");
    let first = store
        .commit(&lease, Some(&rec), &[key("m1", "escalation.created")])
        .await
        .unwrap();
    let again = store
        .commit(&lease, None, &[key("m1", "escalation.created")])
        .await
        .unwrap();
    assert_eq!(first, again, "a retry republishes the same seq and time");
    let next = store
        .commit(
            &lease,
            None,
            &[key("m2", "agent.joined"), key("m2", "agent.message")],
        )
        .await
        .unwrap();
    assert_eq!(next.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 3]);
    store.release(&lease).await.unwrap();
    assert_eq!(
        store
            .begin("acme", "c2", "m3", &claim("w1"))
            .await
            .unwrap()
            .record,
        Some(rec)
    );
    env.cleanup().await;
}

fn short(owner: &str, ttl_ms: u64) -> Claim {
    Claim {
        ttl: Duration::from_millis(ttl_ms),
        ..claim(owner)
    }
}

/// Poll `begin` until the conversation is no longer busy (bounded).
async fn until_free(store: &Store, conv: &str, id: &str, claim: &Claim) -> Lease {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = store.begin("acme", conv, id, claim).await.unwrap();
        if b.admission != Admission::Busy {
            return b.lease.expect("a lease once free");
        }
        assert!(tokio::time::Instant::now() < deadline, "lease never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_held_lease_keeps_a_second_runner_out_until_it_expires() {
    let env = TestEnv::new("store-lease-expiry").await;
    let store = env.store().await;
    let first = take(&store, "c3", "m1", &short("w1", 300)).await;
    let b = store.begin("acme", "c3", "m1", &claim("w2")).await.unwrap();
    assert_eq!(b.admission, Admission::Busy, "w1 holds the conversation");
    assert!(b.lease.is_none());
    assert!(b.busy_for.unwrap() <= Duration::from_millis(300));
    // Another message of the same conversation waits too.
    assert_eq!(
        store
            .begin("acme", "c3", "m2", &claim("w2"))
            .await
            .unwrap()
            .admission,
        Admission::Busy
    );
    let started = tokio::time::Instant::now();
    let second = until_free(&store, "c3", "m1", &claim("w2")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "free only once the first lease expired"
    );
    assert!(second.generation > first.generation, "a new fencing token");
    env.cleanup().await;
}

#[tokio::test]
async fn a_fenced_off_runner_commits_and_finishes_nothing() {
    let env = TestEnv::new("store-lease-fence").await;
    let store = env.store().await;
    let old = take(&store, "c4", "m1", &short("w1", 200)).await;
    let new = until_free(&store, "c4", "m1", &claim("w2")).await;

    let commit = store
        .commit(&old, Some(&record("c4")), &["m1/escalation.created".into()])
        .await;
    assert!(
        matches!(commit, Err(InfraError::Fenced { .. })),
        "{commit:?}"
    );
    // The error says who holds the conversation now (for the log).
    let holder = format!("lease generation {} held by w2", new.generation);
    assert!(
        matches!(&commit, Err(InfraError::Fenced { found, .. }) if *found == holder),
        "{commit:?}"
    );
    let finish = store.finish(&old, "m1", true).await;
    assert!(
        matches!(finish, Err(InfraError::Fenced { .. })),
        "{finish:?}"
    );
    assert!(
        matches!(&finish, Err(InfraError::Fenced { found, .. }) if *found == holder),
        "{finish:?}"
    );
    assert!(!store.renew(&old, Duration::from_secs(20)).await.unwrap());
    // Nothing of the fenced-off runner was written: no record, no seq, not done,
    // and the new runner still holds the conversation.
    let b = store.begin("acme", "c4", "m1", &claim("w3")).await.unwrap();
    assert_eq!(b.admission, Admission::Busy);
    let seqs = store
        .commit(&new, Some(&record("c4")), &["m1/escalation.created".into()])
        .await
        .unwrap();
    assert_eq!(seqs[0].0, 1, "the fenced-off commit assigned no seq");
    store.finish(&new, "m1", true).await.unwrap();
    let b = store.begin("acme", "c4", "m1", &claim("w3")).await.unwrap();
    assert!(
        b.done,
        "finish released the lease and marked the message done"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_expired_lease_nobody_took_still_commits() {
    let env = TestEnv::new("store-lease-lapse").await;
    let store = env.store().await;
    let lease = take(&store, "c5", "m1", &short("w1", 50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    // The generation did not move: no one else ran the conversation.
    store
        .commit(&lease, Some(&record("c5")), &[])
        .await
        .unwrap();
    store.finish(&lease, "m1", true).await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn renewal_keeps_the_lease_while_the_runner_works() {
    let env = TestEnv::new("store-lease-renew").await;
    let store = env.store().await;
    let ttl = Duration::from_millis(300);
    let lease = take(&store, "c6", "m1", &short("w1", 300)).await;
    let probe = store.clone();
    let seen_busy = escalator::pipeline::lease::hold(&store, &lease, ttl, async {
        // Work for four lease TTLs; another runner is kept out all along.
        let mut busy = 0;
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let b = probe.begin("acme", "c6", "m1", &claim("w2")).await.unwrap();
            busy += usize::from(b.admission == Admission::Busy);
        }
        busy
    })
    .await;
    assert_eq!(seen_busy, 12, "the lease never lapsed while renewed");
    // Dropped with the runner: the renewal stops and the lease expires.
    let _ = until_free(&store, "c6", "m1", &claim("w2")).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_parked_head_keeps_its_due_time_and_an_overdue_one_is_dropped() {
    let env = TestEnv::new("store-park-due").await;
    let store = env.store().await;
    // A head parked until later: when it comes back early (e.g. the retry
    // publish failed and the original delivery is retried), begin says when
    // it is due.
    let due = Utc::now() + chrono::Duration::minutes(10);
    assert!(store.park("acme", "c7", "m1", Some(due)).await.unwrap());
    let b = store.begin("acme", "c7", "m1", &claim("w1")).await.unwrap();
    assert_eq!(b.admission, Admission::Head);
    assert_eq!(
        b.due.map(|t| t.timestamp_millis()),
        Some(due.timestamp_millis())
    );
    store.release(&b.lease.unwrap()).await.unwrap();
    // A follower waits behind a head that is not overdue.
    assert_eq!(begin_admission(&store, "c7", "m2").await, Admission::Wait);

    // A head long past its due time (the broker dead-lettered it): its
    // followers go ahead.
    let long_ago = Utc::now() - chrono::Duration::minutes(5);
    assert!(
        store
            .park("acme", "c8", "lost", Some(long_ago))
            .await
            .unwrap()
    );
    let b = store.begin("acme", "c8", "m2", &claim("w1")).await.unwrap();
    assert_eq!(b.admission, Admission::Proceed);
    assert_eq!(b.dropped_heads, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn corrupt_and_newer_records_are_errors() {
    let env = TestEnv::new("store-record-version").await;
    let store = env.store().await;
    let mut c = store.connection();
    let hash = |conv: &str| format!("{}:conv:{{acme:{conv}}}", env.settings.key_prefix);
    let mut newer = serde_json::to_value(record("c9")).unwrap();
    newer["version"] = (escalator::store::RECORD_VERSION + 1).into();
    let _: () = redis::cmd("HSET")
        .arg(hash("c9"))
        .arg("record")
        .arg(newer.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(hash("c10"))
        .arg("record")
        .arg("{\"org_id\": \"acme\", broken")
        .query_async(&mut c)
        .await
        .unwrap();
    let newer = store.begin("acme", "c9", "m1", &claim("w1")).await;
    assert!(
        matches!(
            newer,
            Err(InfraError::NewerRecord {
                found,
                supported: escalator::store::RECORD_VERSION,
                ..
            }) if found == escalator::store::RECORD_VERSION + 1
        ),
        "{newer:?}"
    );
    let corrupt = store.begin("acme", "c10", "m1", &claim("w1")).await;
    assert!(
        matches!(corrupt, Err(InfraError::Corrupt(_))),
        "{corrupt:?}"
    );
    // A record written now carries its version and reads back.
    let lease = until_free(&store, "c11", "m1", &claim("w1")).await;
    store
        .commit(&lease, Some(&record("c11")), &[])
        .await
        .unwrap();
    let text: String = redis::cmd("HGET")
        .arg(hash("c11"))
        .arg("record")
        .query_async(&mut c)
        .await
        .unwrap();
    // A ticket record stays version 1: the previous release, mid rolling
    // deploy, still reads it (live records are version 2).
    assert!(text.contains("\"version\":1"), "{text}");
    env.cleanup().await;
}

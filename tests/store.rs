//! The Redis state scripts, against the real Redis.
mod common;

use chrono::Utc;
use common::TestEnv;
use escalator::contract::{ExternalKind, Mode, ProviderKind};
use escalator::store::{
    Admission, ConversationRecord, ConversationStatus, ExternalRef, PARKED_TTL_SECS,
};

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
        store.begin("acme", "c1", "m1").await.unwrap().admission,
        Admission::Proceed
    );
    assert!(
        store.park("acme", "c1", "m1").await.unwrap(),
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
    assert_eq!(
        store.begin("acme", "c1", "m2").await.unwrap().admission,
        Admission::Wait
    );
    assert!(ttl(&env, &list).await <= 100);
    assert_eq!(
        store.begin("acme", "c1", "m1").await.unwrap().admission,
        Admission::Head
    );
    store.park("acme", "c1", "m1").await.unwrap();
    assert!(
        ttl(&env, &list).await > PARKED_TTL_SECS - 5,
        "the head refreshed it"
    );

    // The head finishes: the follower is next.
    store.finish("acme", "c1", "m1", true).await.unwrap();
    assert_eq!(
        store.begin("acme", "c1", "m2").await.unwrap().admission,
        Admission::Head
    );
    assert!(store.begin("acme", "c1", "m1").await.unwrap().done);

    // A lost head: once the list expires, followers run.
    store.finish("acme", "c1", "m2", false).await.unwrap();
    store.park("acme", "c1", "lost-head").await.unwrap();
    assert_eq!(
        store.begin("acme", "c1", "m3").await.unwrap().admission,
        Admission::Wait
    );
    let _: () = redis::cmd("DEL")
        .arg(&list)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        store.begin("acme", "c1", "m3").await.unwrap().admission,
        Admission::Proceed
    );
    env.cleanup().await;
}

#[tokio::test]
async fn outbound_seqs_are_assigned_once_and_records_saved() {
    let env = TestEnv::new("store-commit").await;
    let store = env.store().await;
    let rec = ConversationRecord {
        org_id: "acme".into(),
        conversation_id: "c2".into(),
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
    };
    let first = store
        .commit("acme", "c2", "m1", Some(&rec), &["escalation.created"])
        .await
        .unwrap();
    let again = store
        .commit("acme", "c2", "m1", None, &["escalation.created"])
        .await
        .unwrap();
    assert_eq!(first, again, "a retry republishes the same seq and time");
    let next = store
        .commit("acme", "c2", "m2", None, &["agent.joined", "agent.message"])
        .await
        .unwrap();
    assert_eq!(next.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(
        store.begin("acme", "c2", "m3").await.unwrap().record,
        Some(rec)
    );
    env.cleanup().await;
}

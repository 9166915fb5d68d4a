//! Events keep arriving from other connections while a pass runs (on PostgreSQL with two batches
//! in flight): none is lost to a batch whose facts were read before it came. An event committed
//! while its enrolment's batch is being stepped must either be stepped or leave the enrolment due.
//! (A batch whose facts were read on another connection than the one writing it, without a check
//! that nothing was committed in between, fails this test: the writer below pings the enrolments
//! of the next batches as the pass goes.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::{self, NewEvent, Pool};
use jiff::Timestamp;

use crate::support::{self, add_patient, open_store, scalar};

const PINGED: &str = r#"pathway: pinged
version: 1
title: { zh: 事件（测试）, en: Events (test) }
owner_role: case_manager
roles: [case_manager]
events: [ping]
entry_points:
  - { id: start, state: waiting }
states:
  - id: waiting
    phase: follow_up
    on_enter:
      - task: { id: check, role: case_manager, title: { zh: 检查, en: Check }, due: 1d }
    transitions:
      - on: ping
        to: pinged
      - after: 1d
        to: waiting
  - id: pinged
    phase: closed
    terminal: true
"#;

const ENROLMENTS: i64 = 2000;
const BATCH: i64 = 8;

fn at(s: &str) -> Timestamp {
    support::ts(s)
}

/// Enrolments in `waiting` with a ping they have not taken and nothing to wake them by `now`.
async fn lost(pool: &Pool, now: Timestamp) -> i64 {
    scalar(
        pool,
        &format!(
            "SELECT COUNT(*) FROM enrolments e WHERE e.state = 'waiting' \
             AND (e.next_wake_at IS NULL OR e.next_wake_at > {}) \
             AND EXISTS (SELECT 1 FROM events v WHERE v.enrolment_id = e.id AND v.name = 'ping' AND v.seq > e.last_event_seq)",
            now.as_second()
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_during_a_pass_are_not_lost() {
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("pinged.yaml", PINGED)]);
        let enrolled = at("2026-11-02T00:00:00Z");
        let (pool, programs) = open_store(&b.url, dir.path(), enrolled).await;
        let mut ids = Vec::new();
        for i in 0..ENROLMENTS {
            let patient = format!("p{i}");
            add_patient(&pool, &patient, enrolled).await;
            let (id, _) = store::enrol(
                &pool, &programs, &patient, "pinged", None, "start", enrolled,
            )
            .await
            .expect("enrol");
            ids.push(id);
        }
        // A day later every enrolment is due; small batches make many batches.
        let now = at("2026-11-03T01:00:00Z");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let writer = {
            let (pool, stop, sent, ids) = (pool.clone(), stop.clone(), sent.clone(), ids.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Pings for the enrolments just past those stepped so far: the ones in the
                    // batches about to be claimed (batches go in id order here).
                    let stepped = scalar(
                        &pool,
                        "SELECT COALESCE(MAX(id), 0) FROM enrolments WHERE state_seq > 1",
                    )
                    .await;
                    let events: Vec<NewEvent> = ids
                        .iter()
                        .filter(|e| **e > stepped && **e <= stepped + 2 * BATCH)
                        .map(|e| NewEvent {
                            enrolment: *e,
                            name: "ping".into(),
                            at: Timestamp::from_second(now.as_second() - 60).expect("instant"),
                            payload: None,
                            source_key: Some(format!("ping:{e}")),
                            created_at: now,
                        })
                        .collect();
                    let mut tx = pool.begin().await.expect("begin");
                    let n = store::add_events(&mut tx, &events).await.expect("events");
                    tx.commit().await.expect("commit");
                    sent.fetch_add(n, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let opts = PassOptions {
            batch_size: BATCH,
            max_batches: None,
        };
        let pass = scheduler::run_pass(&pool, &programs, now, &opts)
            .await
            .expect("pass");
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("the event writer");
        assert!(
            pass.batches >= 20,
            "{name}: {} batches: the pass should take many",
            pass.batches
        );
        assert!(
            sent.load(Ordering::Relaxed) > 0,
            "{name}: no event was sent"
        );
        assert_eq!(
            lost(&pool, now).await,
            0,
            "{name}: an enrolment sleeps past a ping it has not taken ({} pings sent during a pass of {} batches)",
            sent.load(Ordering::Relaxed),
            pass.batches
        );
        // A second pass at the same instant, alone, takes every ping left.
        scheduler::run_pass(&pool, &programs, now, &opts)
            .await
            .expect("second pass");
        let pinged = scalar(
            &pool,
            "SELECT COUNT(DISTINCT enrolment_id) FROM events WHERE name = 'ping'",
        )
        .await;
        assert!(pinged > 0, "{name}");
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM enrolments WHERE state = 'pinged'"
            )
            .await,
            pinged,
            "{name}: every enrolment pinged is in `pinged`"
        );
    }
}

//! Queue pulls over a bulk-built queue (the dataset of `carepath bench-api`, small): every filter,
//! walked page by page with the keyset cursor, yields exactly the tasks of one plain ordered query;
//! and read audits appended concurrently through the shared writer keep one unbroken chain.

use std::path::PathBuf;

use carepath_engine::store::queries::{self, AuditAppender, AuditEntry, Caller, QueueFilter};
use carepath_engine::store::{Arg, Pool};
use jiff::Timestamp;

use crate::support;

/// A case manager who also holds every role the queue has tasks for, so that a page without a
/// role spans the whole institution's queue.
fn caller(institution: &str, roles: &[String]) -> Caller {
    Caller {
        staff_id: format!("{institution}.case_manager"),
        institution_id: institution.to_string(),
        roles: roles.to_vec(),
    }
}

/// Every page of `filter` by cursor, as task ids.
async fn walk(
    pool: &Pool,
    programs: &carepath_engine::Programs,
    who: &Caller,
    filter: &QueueFilter,
) -> Vec<i64> {
    let mut f = filter.clone();
    let mut ids = Vec::new();
    for _ in 0..1_000 {
        let page = queries::queue(pool, programs, who, &f)
            .await
            .expect("queue page");
        ids.extend(page.iter().map(|t| t.id));
        match page.last() {
            Some(last) if page.len() as i64 == f.limit => {
                f.after = Some((last.priority_rank, last.due_at_s, last.id));
            }
            _ => return ids,
        }
    }
    panic!("the cursor walk did not end");
}

/// The same tasks by one plain query in queue order.
async fn plain(pool: &Pool, who: &Caller, filter: &QueueFilter) -> Vec<i64> {
    let mut sql = String::from("SELECT id FROM tasks WHERE institution_id = $1");
    let mut a = vec![Arg::T(who.institution_id.clone())];
    match filter.status.as_deref().unwrap_or("open") {
        "active" => sql.push_str(" AND status IN ('open', 'claimed')"),
        s => {
            a.push(Arg::T(s.into()));
            sql.push_str(&format!(" AND status = ${}", a.len()));
        }
    }
    if let Some(r) = &filter.role {
        a.push(Arg::T(r.clone()));
        sql.push_str(&format!(" AND role = ${}", a.len()));
    }
    if let Some(d) = filter.due_before {
        a.push(Arg::I(d));
        sql.push_str(&format!(" AND due_at < ${}", a.len()));
    }
    if let Some(d) = filter.due_after {
        a.push(Arg::I(d));
        sql.push_str(&format!(" AND due_at >= ${}", a.len()));
    }
    sql.push_str(" ORDER BY priority DESC, due_at, id");
    pool.fetch(&sql, a)
        .await
        .expect("plain query")
        .iter()
        .map(|r| r.i64(0))
        .collect()
}

#[tokio::test]
async fn cursor_pages_of_every_filter_match_one_ordered_query() {
    let pathways = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pathways");
    let now: Timestamp = "2026-06-01T08:00:00Z".parse().expect("instant");
    for b in support::backends() {
        let (pool, programs) = support::open_store(&b.url, &pathways, now).await;
        let built = carepath_engine::seed::task_queue(&pool, &programs, 2_000, now, |_| {})
            .await
            .expect("bulk queue");
        assert_eq!((built.open_tasks, built.closed_tasks), (2_000, 500));
        let open = pool
            .fetch("SELECT COUNT(*) FROM tasks WHERE status = 'open'", vec![])
            .await
            .expect("count")[0]
            .i64(0);
        assert_eq!(open, 2_000, "{}", b.name());

        let day = 86_400;
        let t = now.as_second();
        let filters = [
            QueueFilter::default(),
            QueueFilter {
                role: Some("doctor".into()),
                ..Default::default()
            },
            QueueFilter {
                status: Some("claimed".into()),
                ..Default::default()
            },
            QueueFilter {
                status: Some("active".into()),
                role: Some("case_manager".into()),
                ..Default::default()
            },
            QueueFilter {
                due_before: Some(t),
                ..Default::default()
            },
            QueueFilter {
                due_after: Some(t),
                due_before: Some(t + 7 * day),
                role: Some("doctor".into()),
                ..Default::default()
            },
        ];
        let roles: Vec<String> = pool
            .fetch("SELECT DISTINCT role FROM tasks ORDER BY role", vec![])
            .await
            .expect("roles")
            .iter()
            .map(|r| r.text(0))
            .collect();
        assert!(roles.len() > 2, "{roles:?}");
        for inst in ["lead", "clinic_a"] {
            let who = caller(inst, &roles);
            for filter in &filters {
                let filter = QueueFilter {
                    limit: 37,
                    ..filter.clone()
                };
                let expected = plain(&pool, &who, &filter).await;
                assert!(
                    !expected.is_empty() || filter.due_after.is_some(),
                    "{}: {inst} {filter:?} selects no task; the test proves nothing",
                    b.name()
                );
                assert_eq!(
                    walk(&pool, &programs, &who, &filter).await,
                    expected,
                    "{}: {inst} {filter:?}",
                    b.name()
                );
            }
        }
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_audits_keep_one_chain() {
    let now: Timestamp = "2026-06-01T08:00:00Z".parse().expect("instant");
    for b in support::backends() {
        let pool = Pool::connect(&b.url).await.expect("connect");
        carepath_engine::store::migrate(&pool)
            .await
            .expect("migrate");
        let audit = AuditAppender::start(pool.clone());
        let mut readers = Vec::new();
        for i in 0..200 {
            let audit = audit.clone();
            readers.push(tokio::spawn(async move {
                audit
                    .append(AuditEntry::new(
                        &format!("staff{}", i % 7),
                        Some("lead"),
                        "queue.read",
                        "queues/tasks",
                        &[format!("P{i}")],
                        "ok",
                        "direct",
                        now,
                    ))
                    .await
            }));
        }
        // A write audited in its own transaction, between the batches.
        let mut tx = pool.begin().await.expect("begin");
        queries::audit(
            &mut tx,
            &AuditEntry::new(
                "lead.doctor",
                Some("lead"),
                "task.claim",
                "task/1",
                &[],
                "ok",
                "direct",
                now,
            ),
        )
        .await
        .expect("audit in a transaction");
        tx.commit().await.expect("commit");
        for r in readers {
            r.await.expect("reader").expect("audited");
        }
        let v = queries::verify_audit(&pool, &[]).await.expect("verify");
        assert!(v.intact(), "{}: {v:?}", b.name());
        assert_eq!(v.rows, 201, "{}", b.name());
        pool.close().await;
    }
}

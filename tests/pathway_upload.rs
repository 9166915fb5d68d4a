//! Pathway uploads over a real TCP listener: a fragment is included only from inside the pathways
//! folder (absolute paths, `..`, and devices are refused with one message that discloses nothing of
//! the file or whether it exists), and slow Rhai uploads compile off the async workers under a time
//! limit, so `/health` keeps answering while they run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use carepath_admin_api::AppState;
use carepath_engine::store::{self, queries};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support;

const TOKEN: &str = "cp_upload_informaticist";
const REFUSED: &str = "no such fragment file inside the pathway folder";

struct Server {
    addr: SocketAddr,
    /// The folder holding `pathways/` (the upload root) and, beside it, `secrets.yaml`.
    dir: tempfile::TempDir,
    _db: support::Backend,
    _pathways: tempfile::TempDir,
}

/// Serves the admin API on a loopback port with uploads rooted at a copy of the pathways folder's
/// fragments, and a YAML file of secrets just outside it.
async fn serve(limit: Duration) -> Server {
    let db = support::sqlite();
    let pathways = support::test_pathways();
    let now = support::ts("2026-06-01T08:00:00Z");
    let (pool, programs) = support::open_store(&db.url, pathways.path(), now).await;
    let mut tx = pool.begin().await.expect("begin");
    store::insert_staff(
        &mut tx,
        "lead.informaticist",
        "lead",
        "informaticist",
        &["informaticist"],
        Some(queries::token_hash(TOKEN)),
    )
    .await
    .expect("staff");
    tx.commit().await.expect("commit");

    let dir = support::tempdir();
    let root = dir.path().join("pathways");
    std::fs::create_dir_all(root.join("fragments")).expect("mkdir");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pathways");
    std::fs::copy(
        repo.join("fragments/standard_follow_up.yaml"),
        root.join("fragments/standard_follow_up.yaml"),
    )
    .expect("copy the fragment");
    std::fs::write(
        dir.path().join("secrets.yaml"),
        "database_password: hunter2\nsigning_key: abc\n",
    )
    .expect("write secrets");

    let mut state = AppState::new(pool, programs);
    state.uploads.root = root;
    state.uploads.limit = limit;
    let app = carepath_admin_api::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        addr,
        dir,
        _db: db,
        _pathways: pathways,
    }
}

/// One HTTP/1.1 exchange on a new connection: (status, content type, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: carepath\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("receive");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

fn including(fragment: &str) -> String {
    format!(
        "pathway: upload_probe\nversion: 1\ntitle: probe\nowner_role: case_manager\nroles: [case_manager]\nentry_points: [{{ id: e, state: a }}]\ninclude:\n  - fragment: {fragment}\n    prefix: fu_\n    exits: {{ done: b }}\nstates:\n  - id: a\n    phase: follow_up\n    transitions: [{{ after: 1d, to: b }}]\n  - {{ id: b, phase: closed, terminal: true }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_read_fragments_only_from_inside_the_pathways_folder() {
    let server = serve(Duration::from_secs(5)).await;
    let secrets = server.dir.path().join("secrets.yaml");
    let hostile = [
        "/etc/passwd".to_string(),
        "../../../../etc/passwd".to_string(),
        "/dev/zero".to_string(),
        "../secrets.yaml".to_string(),
        secrets.display().to_string(),
        "fragments/../../secrets.yaml".to_string(),
        // Paths that do not exist answer exactly like those that do.
        "/etc/no_such_file_here".to_string(),
        "../no_such_file.yaml".to_string(),
    ];
    for rel in &hostile {
        let started = Instant::now();
        let (status, ctype, body) = tokio::time::timeout(
            Duration::from_secs(20),
            http(
                server.addr,
                "POST",
                "/pathways",
                Some(json!({"source": including(rel)})),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("the upload including {rel} did not answer"));
        assert_eq!(status, 422, "{rel}: {body}");
        assert_eq!(ctype, "application/problem+json", "{rel}");
        assert!(started.elapsed() < Duration::from_secs(10), "{rel}");
        for leak in [
            "root:",
            "daemon",
            "nologin",
            "database_password",
            "signing_key",
            "hunter2",
        ] {
            assert!(
                !body.contains(leak),
                "{rel}: the answer discloses `{leak}`: {body}"
            );
        }
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let diags = v["diagnostics"].as_array().expect("diagnostics");
        assert!(
            diags.iter().all(|d| d["file"] == "upload.yaml"),
            "{rel}: a diagnostic names another file: {body}"
        );
        let refusal: Vec<&Value> = diags.iter().filter(|d| d["code"] == "E020").collect();
        assert_eq!(refusal.len(), 1, "{rel}: {body}");
        let d = refusal[0];
        assert_eq!(
            d["message"],
            format!("cannot read fragment `{rel}`: {REFUSED}"),
            "{rel}"
        );
        assert_eq!(
            (d["line"].as_u64(), d["col"].as_u64()),
            (Some(8), Some(15)),
            "{rel}: {d}"
        );
        assert!(!d["hint"].as_str().unwrap_or("").is_empty(), "{rel}");
        assert_eq!(v["detail"], d["message"], "{rel}");
    }

    // The fragment inside the folder is included as before.
    let stroke = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pathways/stroke.yaml"),
    )
    .expect("stroke.yaml");
    assert!(stroke.contains("fragment: fragments/standard_follow_up.yaml"));
    let (status, _, body) = http(
        server.addr,
        "POST",
        "/pathways",
        Some(json!({"source": stroke})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// Stays within the script's operation cap yet runs for about a minute: every round copies a value
/// of nine thousand nested elements.
const SLOW_NESTED: &str = "let a = [1,2,3,4,5,6,7,8,9,10];\nlet b = [a,a,a,a,a,a,a,a,a,a];\nlet c = [b,b,b,b,b,b,b,b,b,b];\nlet d = [c,c,c,c,c,c,c,c,c];\nfor i in 0..100000 {\n  let e = d;\n  e.len();\n}\n1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_slow_rhai_uploads_compile() {
    let limit = Duration::from_secs(2);
    let server = serve(limit).await;
    let started = Instant::now();
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(http(
                server.addr,
                "POST",
                "/pathways",
                Some(json!({"format": "rhai", "source": SLOW_NESTED})),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(10),
            http(server.addr, "GET", "/health", None),
        )
        .await
        .expect("/health did not answer while uploads compiled");
        assert_eq!(status, 200, "{body}");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Aimed at 100 ms; a loose bound keeps a busy test machine from failing it.
    assert!(slowest < Duration::from_secs(1), "/health took {slowest:?}");

    let mut stopped = 0;
    for upload in uploads {
        let (status, ctype, body) = tokio::time::timeout(Duration::from_secs(30), upload)
            .await
            .expect("an upload did not answer")
            .expect("the upload task");
        assert_eq!(ctype, "application/problem+json", "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        match status {
            422 => {
                stopped += 1;
                let d = &v["diagnostics"][0];
                assert_eq!(d["code"], "E021", "{body}");
                assert_eq!(d["file"], "upload.rhai", "{body}");
                assert!(
                    d["line"].as_u64().is_some_and(|l| l >= 5),
                    "located in the loop: {body}"
                );
                let message = d["message"].as_str().unwrap_or("");
                assert!(message.contains("took too long"), "{body}");
            }
            503 => {
                let detail = v["detail"].as_str().unwrap_or("");
                assert!(detail.contains("too many pathway uploads"), "{body}");
            }
            other => panic!("an upload answered {other}: {body}"),
        }
    }
    assert!(stopped >= 1, "no upload was compiled and stopped");
    assert!(
        started.elapsed() < limit + Duration::from_secs(6),
        "the uploads answered only after {:?}",
        started.elapsed()
    );
}

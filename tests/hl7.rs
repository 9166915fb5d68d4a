//! HL7 v2 ADT over MLLP end to end, on each backend: a real client (the `hl7` package from PyPI,
//! its `MLLPClient`) sends messages to a served listener; the acknowledgements (read back by the
//! same package), the rows written, resends, cancels, GB 18030 text and malformed messages are
//! checked against the store. A generated hostile stream goes through the same handler in
//! process: every message is refused and nothing is written.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use carepath_engine::Programs;
use carepath_engine::hl7::{self, Limits, Service};
use carepath_engine::hospital::Hospital;
use carepath_engine::intake::IntakeRules;
use carepath_engine::store::crypto::ContactKey;
use carepath_engine::store::{self, Pool};
use jiff::Timestamp;
use serde_json::Value;

use crate::support::{self, Backend, loud, rows, scalar};

const CLIENT_PY: &str = include_str!("hl7_client.py");

fn ensure_hl7() {
    // Tests run in parallel: one installs, the others wait for it.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let importable = || {
        Command::new("python3")
            .args(["-c", "import hl7, hl7.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if importable() {
        return;
    }
    loud(
        "the Python package hl7 is not installed: installing it with `python3 -m pip install --quiet hl7`",
    );
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "hl7"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 to install hl7 (Python 3 with pip is required for the MLLP tests): {e}"));
    assert!(
        out.status.success() && importable(),
        "could not install hl7 with pip (the MLLP tests need it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the client read back for one message.
#[derive(Debug, Clone)]
struct Ack {
    msa1: String,
    msa2: String,
    text: String,
    bytes: Vec<u8>,
}

/// Sends `connections` (each a list of messages, one connection each) with the Python client.
async fn send(addr: SocketAddr, connections: Vec<Vec<Vec<u8>>>) -> Vec<Ack> {
    ensure_hl7();
    tokio::task::spawn_blocking(move || {
        let dir = support::tempdir();
        let script = dir.path().join("client.py");
        std::fs::write(&script, CLIENT_PY).expect("client script");
        let input = dir.path().join("messages.json");
        let hex: Vec<Vec<String>> = connections
            .iter()
            .map(|c| c.iter().map(hex::encode).collect())
            .collect();
        std::fs::write(&input, serde_json::to_vec(&hex).unwrap()).expect("messages");
        let out = Command::new("python3")
            .arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&input)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "the MLLP client failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("client output");
        results
            .into_iter()
            .map(|r| {
                assert!(
                    r.get("closed").is_none(),
                    "the server closed the connection"
                );
                Ack {
                    msa1: r["msa1"].as_str().unwrap().to_owned(),
                    msa2: r["msa2"].as_str().unwrap().to_owned(),
                    text: r["text"].as_str().unwrap().to_owned(),
                    bytes: hex::decode(r["hex"].as_str().unwrap()).unwrap(),
                }
            })
            .collect()
    })
    .await
    .expect("client thread")
}

/// A listener on a free port for as long as the value lives.
struct Listener {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn listen(pool: &Pool, programs: &Programs, key: Option<ContactKey>) -> Listener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let service = Service {
        pool: pool.clone(),
        programs: Arc::new(RwLock::new(programs.clone())),
        intake: Arc::default(),
        contact_key: key.map(Arc::new),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let limits = Limits {
        read_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    tokio::spawn(hl7::listen(listener, service, limits, async {
        let _ = stopped.await;
    }));
    Listener {
        addr,
        stop: Some(stop),
    }
}

fn key() -> ContactKey {
    ContactKey::from_bytes(&[42u8; 32]).expect("a key")
}

/// Segment `id` with the given fields set (by HL7 number) and the rest empty.
fn seg(id: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|f| f.0).max().unwrap_or(0);
    let mut out = id.to_owned();
    for n in 1..=last {
        out.push('|');
        if let Some((_, v)) = fields.iter().find(|f| f.0 == n) {
            out.push_str(v);
        }
    }
    out
}

fn msh(trigger: &str, control: &str, facility: &str, charset: &str) -> String {
    format!(
        "MSH|^~\\&|HIS|{facility}|CAREPATH|随访中心|20240301083000||ADT^{trigger}^ADT_A01|{control}|P|2.5|||||CHN|{charset}"
    )
}

/// A UTF-8 message from `lead`.
fn message(trigger: &str, control: &str, segments: &[String]) -> Vec<u8> {
    let mut text = msh(trigger, control, "lead", "UNICODE UTF-8");
    for s in segments {
        text.push('\r');
        text.push_str(s);
    }
    text.push('\r');
    text.into_bytes()
}

fn pid(id: &str) -> String {
    seg(
        "PID",
        &[
            (1, "1"),
            (3, &format!("{id}^^^lead^MR")),
            (7, "19500412"),
            (8, "F"),
            (13, "13800000000^PRN^PH"),
        ],
    )
}

fn pv1(class: &str, dept: &str, visit: &str, admit: &str, discharge: &str) -> String {
    seg(
        "PV1",
        &[
            (1, "1"),
            (2, class),
            (3, dept),
            (4, "E"),
            (19, visit),
            (44, admit),
            (45, discharge),
        ],
    )
}

fn t0() -> Timestamp {
    Timestamp::now()
}

async fn open(b: &Backend) -> (Pool, Programs, tempfile::TempDir) {
    let dir = support::test_pathways();
    let (pool, programs) = support::open_store(&b.url, dir.path(), t0()).await;
    // A patient of another alliance, whom no message from this one may touch.
    let mut tx = pool.begin().await.expect("begin");
    carepath_engine::store::insert_institution(
        &mut tx,
        "elsewhere",
        "Another alliance",
        "lead_hospital",
        None,
    )
    .await
    .expect("institution");
    tx.commit().await.expect("commit");
    support::add_patient_at(&pool, "P-404", "elsewhere", t0()).await;
    (pool, programs, dir)
}

/// `name|voided` of the events of enrolment `e`.
async fn events(pool: &Pool, e: i64) -> Vec<String> {
    rows(
        pool,
        &format!(
            "SELECT name, CASE WHEN void_at IS NULL THEN 'live' ELSE 'void' END FROM events WHERE enrolment_id = {e} AND name IN ('admitted', 'discharged', 'admission_cancelled', 'discharge_cancelled')"
        ),
        2,
    )
    .await
}

async fn encounters(pool: &Pool) -> Vec<String> {
    rows(
        pool,
        "SELECT identifier, patient_id, institution_id, class, department, CAST(acute AS TEXT), \
         CASE WHEN admitted_at IS NULL THEN '-' ELSE 'admitted' END, \
         CASE WHEN discharged_at IS NULL THEN '-' ELSE 'discharged' END, status FROM encounters",
        9,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adt_over_mllp_records_encounters_once_and_undoes_cancels() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        let server = listen(&pool, &programs, None).await;

        // A04 without a visit number registers the patient.
        let acks = send(
            server.addr,
            vec![vec![message(
                "A04",
                "C-A04",
                &[pid("P-1"), seg("PV1", &[(1, "1"), (2, "O")])],
            )]],
        )
        .await;
        assert_eq!(acks[0].msa1, "AA", "{name}: {}", acks[0].text);
        assert_eq!(
            rows(&pool, "SELECT id, institution_id, birth_date, sex, CASE WHEN contact_enc IS NULL THEN 'no contact' ELSE 'contact' END FROM patients WHERE institution_id = 'lead'", 5).await,
            ["P-1|lead|1950-04-12|female|no contact"],
            "{name}: without a contact key the phone number is ignored"
        );
        let e = store::enrol(
            &pool,
            &programs,
            "P-1",
            "wound_care",
            None,
            "discharge",
            t0(),
        )
        .await
        .expect("enrol")
        .0;

        let a01 = message(
            "A01",
            "C-A01",
            &[
                "EVN|A01|20240301083000".into(),
                pid("P-1"),
                pv1("I", "NEURO^301^2", "V-1", "20240301081500", ""),
                "DG1|1|I10|I63.9^脑梗死^I10||20240301|A".into(),
                seg(
                    "DG1",
                    &[(1, "2"), (3, "I10^Hypertension^I10"), (6, "W"), (15, "1")],
                ),
            ],
        );
        let huge = message(
            "A08",
            "C-HUGE",
            &[seg("PID", &[(3, "P-1"), (5, &"x".repeat(70 * 1024))])],
        );
        let mut bad_bytes = msh("A08", "C-BYTES", "lead", "GB18030").into_bytes();
        bad_bytes.extend_from_slice(b"\rPID|1||P-1||\xff\xfe^x\r");
        let acks = send(
            server.addr,
            vec![vec![
                a01.clone(),
                a01.clone(),
                message(
                    "A02",
                    "C-A02",
                    &[pid("P-1"), pv1("I", "CARD", "V-1", "", "")],
                ),
                message(
                    "A03",
                    "C-A03",
                    &[pid("P-1"), pv1("I", "CARD", "V-1", "", "20240310100000")],
                ),
                message(
                    "A03",
                    "C-404",
                    &[pid("P-404"), pv1("I", "CARD", "V-9", "", "20240310100000")],
                ),
                b"PID|1||P-1\rPV1|1|I\r".to_vec(),
                message(
                    "A03",
                    "C-NOVISIT",
                    &[pid("P-1"), pv1("I", "CARD", "", "", "20240310100000")],
                ),
                bad_bytes,
                huge,
                {
                    let mut m = msh("A08", "C-WHERE", "nowhere", "").into_bytes();
                    m.extend_from_slice(format!("\r{}\r", pid("P-1")).as_bytes());
                    m
                },
                message("A08", "C-A08", &[seg("PID", &[(3, "P-1"), (8, "M")])]),
            ]],
        )
        .await;
        let codes: Vec<&str> = acks.iter().map(|a| a.msa1.as_str()).collect();
        assert_eq!(
            codes,
            [
                "AA", "AA", "AA", "AA", "AE", "AR", "AR", "AR", "AR", "AR", "AA"
            ],
            "{name}: {acks:#?}"
        );
        let controls: Vec<&str> = acks.iter().map(|a| a.msa2.as_str()).collect();
        assert_eq!(
            controls,
            [
                "C-A01",
                "C-A01",
                "C-A02",
                "C-A03",
                "C-404",
                "",
                "C-NOVISIT",
                "C-BYTES",
                "C-HUGE",
                "C-WHERE",
                "C-A08"
            ],
            "{name}"
        );
        assert_eq!(
            acks[1].bytes, acks[0].bytes,
            "{name}: a resend is answered with the first acknowledgement"
        );
        assert!(
            acks[0]
                .text
                .starts_with("MSH|^~\\&|CAREPATH|随访中心|HIS|lead|"),
            "{name}: {}",
            acks[0].text
        );
        assert!(
            acks[4].text.contains("patient P-404 not found"),
            "{name}: {}",
            acks[4].text
        );
        assert!(
            acks[5].text.contains("does not begin with an MSH segment"),
            "{name}"
        );
        assert!(
            acks[6]
                .text
                .contains("PV1-19 (visit number) is required for A03"),
            "{name}: {}",
            acks[6].text
        );
        assert!(
            acks[6]
                .text
                .contains("\rERR||PV1^1^19|101^Required field missing^HL70357|E||||"),
            "{name}"
        );
        assert!(
            acks[7].text.contains("not GB 18030"),
            "{name}: {}",
            acks[7].text
        );
        assert!(
            acks[8].text.contains("PID-5 is 71680 bytes"),
            "{name}: {}",
            acks[8].text
        );
        assert!(
            acks[9].text.contains("unknown sending facility `nowhere`"),
            "{name}: {}",
            acks[9].text
        );

        assert_eq!(
            encounters(&pool).await,
            ["V-1|P-1|lead|inpatient|CARD|1|admitted|discharged|active"],
            "{name}: one encounter, transferred and discharged; nothing of P-404"
        );
        assert_eq!(
            rows(
                &pool,
                "SELECT code, CAST(principal AS TEXT), source FROM diagnoses",
                3
            )
            .await,
            ["I10|1|hl7:lead", "I639|0|hl7:lead"],
            "{name}: DG1-15 names the principal diagnosis"
        );
        assert_eq!(
            events(&pool, e).await,
            ["admitted|live", "discharged|live"],
            "{name}: once each, the resend added nothing"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM patients WHERE institution_id = 'lead'"
            )
            .await,
            1,
            "{name}"
        );
        assert_eq!(
            rows(
                &pool,
                "SELECT sex FROM patients WHERE institution_id = 'lead'",
                1
            )
            .await,
            ["male"],
            "{name}: A08 updated the patient"
        );
        assert_eq!(
            rows(
                &pool,
                "SELECT control_id, outcome FROM interface_messages",
                2
            )
            .await,
            ["C-A01|AA", "C-A02|AA", "C-A03|AA", "C-A04|AA", "C-A08|AA"],
            "{name}: only accepted messages are recorded"
        );
        assert!(
            scalar(&pool, "SELECT COUNT(*) FROM audit_log WHERE actor = 'hl7:HIS' AND action = 'encounter.record'").await >= 3,
            "{name}: the sending application is the audited caller"
        );

        // A13 undoes the discharge, A11 the admission; resending A11 changes nothing more.
        let a11 = message(
            "A11",
            "C-A11",
            &[pid("P-1"), pv1("I", "CARD", "V-1", "", "")],
        );
        let acks = send(
            server.addr,
            vec![
                vec![message(
                    "A13",
                    "C-A13",
                    &[pid("P-1"), pv1("I", "CARD", "V-1", "", "")],
                )],
                vec![a11.clone(), a11],
            ],
        )
        .await;
        let codes: Vec<&str> = acks.iter().map(|a| a.msa1.as_str()).collect();
        assert_eq!(codes, ["AA", "AA", "AA"], "{name}: {acks:#?}");
        assert_eq!(acks[2].bytes, acks[1].bytes, "{name}");
        assert_eq!(
            encounters(&pool).await,
            ["V-1|P-1|lead|inpatient|CARD|1|admitted|-|cancelled"],
            "{name}"
        );
        assert_eq!(
            events(&pool, e).await,
            ["admitted|void", "discharged|void"],
            "{name}"
        );
        // A second A13 has nothing to undo: an error, and nothing changes.
        let acks = send(
            server.addr,
            vec![vec![message(
                "A13",
                "C-A13-again",
                &[pid("P-1"), pv1("I", "CARD", "V-1", "", "")],
            )]],
        )
        .await;
        assert_eq!(acks[0].msa1, "AE", "{name}: {}", acks[0].text);
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM interface_messages").await,
            7,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gb18030_messages_are_read_and_answered_in_gb18030() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        let server = listen(&pool, &programs, Some(key())).await;
        let text = format!(
            "{}\rEVN|A01|20240301083000\r{}\r{}\rDG1|1|I10|I63.9^脑梗死^I10\r",
            msh("A01", "C-GB", "lead", "GB 18030-2000"),
            seg(
                "PID",
                &[
                    (3, "P-2"),
                    (5, "张^三"),
                    (7, "19600101"),
                    (8, "M"),
                    (11, "北京市朝阳区^^北京"),
                    (13, "13900000000^PRN^CP~^NET^Internet^p2@example.cn"),
                    (15, "zh")
                ]
            ),
            pv1("I", "神经内科", "V-2", "20240301081500", ""),
        );
        let (gb, _, _) = encoding_rs::GB18030.encode(&text);
        assert!(
            std::str::from_utf8(&gb).is_err(),
            "the message is GB 18030 bytes"
        );
        // The same message as UTF-8 bytes under the same declaration is refused, as is a
        // declaration carepath does not read.
        let acks = send(
            server.addr,
            vec![vec![
                gb.to_vec(),
                text.replace("GB 18030-2000", "8859/1").into_bytes(),
            ]],
        )
        .await;
        assert_eq!(acks[0].msa1, "AA", "{name}: {}", acks[0].text);
        assert!(
            std::str::from_utf8(&acks[0].bytes).is_err(),
            "{name}: the acknowledgement is GB 18030 too"
        );
        assert!(
            acks[0].text.contains("|CAREPATH|随访中心|HIS|lead|"),
            "{name}: {}",
            acks[0].text
        );
        assert!(
            acks[0].text.contains("||||||GB 18030-2000\r"),
            "{name}: {}",
            acks[0].text
        );
        assert_eq!(acks[1].msa1, "AR", "{name}");
        assert!(
            acks[1]
                .text
                .contains("MSH-18 (character set) `8859/1` is not supported"),
            "{name}: {}",
            acks[1].text
        );

        assert_eq!(
            encounters(&pool).await,
            ["V-2|P-2|lead|inpatient|神经内科|1|admitted|-|active"],
            "{name}"
        );
        let sealed = rows(
            &pool,
            "SELECT contact_enc, lang FROM patients WHERE id = 'P-2'",
            2,
        )
        .await;
        let (sealed, lang) = sealed[0].split_once('|').unwrap();
        assert_eq!(lang, "zh", "{name}");
        let contact = key().decrypt(sealed).expect("decrypts");
        assert_eq!(contact.name.as_deref(), Some("张三"), "{name}");
        assert_eq!(contact.phone.as_deref(), Some("13900000000"), "{name}");
        assert_eq!(contact.email.as_deref(), Some("p2@example.cn"), "{name}");
    }
}

/// A small deterministic generator (xorshift), seeded per run and printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn word(&mut self) -> String {
        let n = 1 + self.below(12);
        (0..n)
            .map(|_| (b'A' + self.below(26) as u8) as char)
            .collect()
    }
}

/// A message that must be refused, of one of many kinds, with random content.
fn hostile(rng: &mut Rng, i: usize) -> Vec<u8> {
    let control = format!("H{i}");
    let visit = pv1("I", "NEURO", "V-H", "20240301", "");
    let good = |rng: &mut Rng| -> Vec<String> {
        let _ = rng;
        vec![pid("P-1"), visit.clone()]
    };
    match rng.below(14) {
        0 => {
            let n = 1 + rng.below(300);
            rng.bytes(n)
        }
        1 => {
            let mut m = message("A01", &control, &good(rng));
            m.truncate(rng.below(8));
            m
        }
        2 => message(&format!("A{}", 20 + rng.below(70)), &control, &good(rng)),
        3 => {
            let trigger = ["A01", "A02", "A03", "A11", "A13"][rng.below(5)];
            message(
                trigger,
                &control,
                &[pid("P-1"), pv1("I", "NEURO", "", "20240301", "")],
            )
        }
        4 => {
            let id = format!("{}{}", rng.word(), ["!", "/", "@", "。", "%"][rng.below(5)]);
            message("A01", &control, &[seg("PID", &[(3, &id)]), visit])
        }
        5 => {
            let mut m = message("A01", &control, &good(rng));
            let at = 60 + rng.below(m.len() - 60);
            m.insert(at, 0xF8 + rng.below(8) as u8);
            m
        }
        6 => {
            let mut m = msh("A01", &control, &rng.word().to_lowercase(), "").into_bytes();
            m.extend_from_slice(format!("\r{}\r{visit}\r", pid("P-1")).as_bytes());
            m
        }
        7 => {
            let born = [
                rng.word(),
                format!("18{:02}0101", rng.below(90)),
                "29991231".into(),
            ];
            let born = born[rng.below(3)].clone();
            message(
                "A01",
                &control,
                &[seg("PID", &[(3, "P-1"), (7, &born)]), visit],
            )
        }
        8 => message(
            "A01",
            &control,
            &[
                pid("P-1"),
                visit,
                format!("DG1|1||{}", rng.word().to_lowercase()),
            ],
        ),
        9 => {
            let raw = String::from_utf8(message("A01", &control, &good(rng))).unwrap();
            raw.replace("|2.5|", &format!("|3.{}|", rng.below(9)))
                .into_bytes()
        }
        10 => message(
            ["A02", "A03"][rng.below(2)],
            &control,
            &[pid("P-404"), visit],
        ),
        11 => message(
            "A08",
            &control,
            &[seg(
                "PID",
                &[(3, "P-1"), (5, &"y".repeat(65 * 1024 + rng.below(1000)))],
            )],
        ),
        12 => {
            let raw = String::from_utf8(message("A01", &control, &good(rng))).unwrap();
            raw.replace("UNICODE UTF-8", &rng.word()).into_bytes()
        }
        _ => {
            let mut m = message(
                "A11",
                &control,
                &[
                    pid("P-1"),
                    pv1("I", "X", &format!("V-{}", rng.word()), "", ""),
                ],
            );
            let n = rng.below(4);
            let junk = rng.bytes(n);
            m.extend(junk.into_iter().map(|b| b & 0x7f | 0x20));
            m
        }
    }
}

#[tokio::test]
async fn hostile_messages_are_each_refused_and_write_nothing() {
    let seed = support::random_seed() | 1;
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        support::add_patient(&pool, "P-1", t0()).await;
        let intake = IntakeRules::default();
        let key = key();
        let hospital = Hospital {
            programs: &programs,
            intake: &intake,
            contact_key: Some(&key),
        };
        let tables = [
            "patients",
            "encounters",
            "diagnoses",
            "interface_messages",
            "events",
            "audit_log",
            "enrolments",
        ];
        let mut before = Vec::new();
        for t in tables {
            before.push(support::count(&pool, t).await);
        }
        let mut rng = Rng(seed);
        for i in 0..520 {
            let raw = hostile(&mut rng, i);
            let ack = hl7::handle(&pool, &hospital, "127.0.0.1", &raw, t0()).await;
            let (text, _, _) = encoding_rs::GB18030.decode(&ack);
            let msa = text
                .split('\r')
                .find(|s| s.starts_with("MSA|"))
                .unwrap_or_else(|| panic!("{name} seed {seed} message {i}: no MSA in {text:?}"));
            assert!(
                msa.starts_with("MSA|AR|") || msa.starts_with("MSA|AE|"),
                "{name} seed {seed} message {i} was accepted: {:?}\n{text}",
                String::from_utf8_lossy(&raw)
            );
        }
        let mut after = Vec::new();
        for t in tables {
            after.push(support::count(&pool, t).await);
        }
        assert_eq!(before, after, "{name} seed {seed}: {tables:?}");
    }
}

/// Kills the server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

const KEY_HEX: &str = "2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carepath_serve_mllp_accepts_adt_beside_the_api() {
    for b in support::backends() {
        let name = b.name();
        let (pool, _programs, dir) = open(&b).await;
        let (http, mllp) = (free_port(), free_port());
        let mllp_addr: SocketAddr = format!("127.0.0.1:{mllp}").parse().unwrap();
        let _server = Child(
            support::carepath()
                .args(["serve", "--db", &b.url, "--sweep-seconds", "3600"])
                .arg("--pathways")
                .arg(dir.path())
                .args([
                    "--addr",
                    &format!("127.0.0.1:{http}"),
                    "--mllp",
                    &mllp_addr.to_string(),
                ])
                .env("CAREPATH_CONTACT_KEY", KEY_HEX)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("carepath serve starts"),
        );
        let mut up = false;
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(mllp_addr).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "{name}: carepath serve --mllp does not listen");
        let a01 = message(
            "A01",
            "C-CLI",
            &[pid("P-3"), pv1("I", "NEURO", "V-3", "20240301081500", "")],
        );
        let acks = send(mllp_addr, vec![vec![a01.clone()], vec![a01]]).await;
        assert_eq!(acks[0].msa1, "AA", "{name}: {}", acks[0].text);
        assert_eq!(acks[1].bytes, acks[0].bytes, "{name}");
        assert_eq!(
            encounters(&pool).await,
            ["V-3|P-3|lead|inpatient|NEURO|1|admitted|-|active"],
            "{name}"
        );
        let sealed = rows(
            &pool,
            "SELECT contact_enc FROM patients WHERE id = 'P-3'",
            1,
        )
        .await;
        let contact = ContactKey::parse(KEY_HEX)
            .unwrap()
            .decrypt(&sealed[0])
            .expect("sealed with the server's key");
        assert_eq!(contact.phone.as_deref(), Some("13800000000"), "{name}");
    }
}

/// Sends `messages` on one connection of its own and returns the acknowledgements' bytes.
async fn exchange(addr: SocketAddr, messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut out = Vec::new();
    for m in messages {
        stream.write_all(&hl7::mllp::frame(&m)).await.expect("send");
        let mut reply = Vec::new();
        while !reply.ends_with(&hl7::mllp::END_BLOCK) {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                .await
                .expect("an acknowledgement in time")
                .expect("read");
            assert!(n > 0, "the server closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
        out.push(reply[1..reply.len() - 2].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connections_apply_a_message_once() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        support::add_patient(&pool, "P-1", t0()).await;
        let server = listen(&pool, &programs, None).await;
        let a01 = message(
            "A01",
            "C-SAME",
            &[pid("P-1"), pv1("I", "NEURO", "V-1", "20240301081500", "")],
        );
        let mut clients = Vec::new();
        for i in 0..8 {
            let own = message("A08", &format!("C-OWN-{i}"), &[seg("PID", &[(3, "P-1")])]);
            clients.push(tokio::spawn(exchange(server.addr, vec![a01.clone(), own])));
        }
        let mut firsts = Vec::new();
        for c in clients {
            let acks = c.await.expect("client");
            for ack in &acks {
                let text = String::from_utf8_lossy(ack);
                assert!(text.contains("\rMSA|AA|"), "{name}: {text}");
            }
            firsts.push(acks[0].clone());
        }
        assert!(
            firsts.windows(2).all(|w| w[0] == w[1]),
            "{name}: every copy is answered with the one acknowledgement"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM audit_log WHERE action = 'encounter.record'"
            )
            .await,
            1,
            "{name}: the encounter was recorded once"
        );
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM interface_messages").await,
            9,
            "{name}"
        );
        // A frame over the limit is refused and its connection closed; the listener goes on.
        let mut big = msh("A08", "C-BIG", "lead", "").into_bytes();
        big.extend(std::iter::repeat_n(b'x', hl7::message::MAX_MESSAGE));
        let acks = exchange(server.addr, vec![big]).await;
        let text = String::from_utf8_lossy(&acks[0]);
        assert!(
            text.contains("\rMSA|AR|C-BIG|the message is larger than"),
            "{name}: {text}"
        );
        let acks = exchange(
            server.addr,
            vec![message("A08", "C-AFTER", &[seg("PID", &[(3, "P-1")])])],
        )
        .await;
        assert!(
            String::from_utf8_lossy(&acks[0]).contains("\rMSA|AA|C-AFTER"),
            "{name}"
        );
    }
}

/// A feed started mid-stay: the discharge (A03) of a patient never admitted through it creates the
/// patient from PID, and the intake rules enrol them; a second discharge message for a known
/// patient changes nothing of who they are.
#[tokio::test]
async fn a_discharge_of_a_patient_not_known_yet_creates_and_enrols_them() {
    let Some(real) = support::real_pathways() else {
        return;
    };
    for b in support::backends() {
        let name = b.name();
        let (pool, programs) = support::open_store(&b.url, &real, t0()).await;
        let intake = IntakeRules::load_dir(&real.join("intake"), &programs).expect("intake rules");
        let hospital = Hospital {
            programs: &programs,
            intake: &intake,
            contact_key: None,
        };
        let a03 = |control: &str, sex: &str| {
            [
                format!("MSH|^~\\&|HIS|lead|CAREPATH|CP|20240306093000+0800||ADT^A03^ADT_A03|{control}|P|2.5|||||CHN|UNICODE UTF-8"),
                "EVN|A03|20240306093000+0800".to_string(),
                format!("PID|1||P-NEW^^^lead^MR||||19500412|{sex}"),
                "PV1|1|I|神经内科^301^2|E|||||||||||||||V-NEW|||||||||||||||||||||||||20240301100000+0800|20240306093000+0800".to_string(),
                "DG1|1|I10|I63.9^脑梗死^I10||20240301|A|||||||||1".to_string(),
            ]
            .join("\r")
            .into_bytes()
        };
        let now = support::ts("2024-03-06T02:00:00Z");
        let ack = hl7::handle(&pool, &hospital, "test", &a03("N-1", "M"), now).await;
        let ack = String::from_utf8_lossy(&ack).to_string();
        assert!(ack.contains("MSA|AA|N-1"), "{name}: {ack}");
        assert_eq!(
            rows(
                &pool,
                "SELECT institution_id, sex FROM patients WHERE id = 'P-NEW'",
                2
            )
            .await,
            ["lead|male"],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM enrolments WHERE patient_id = 'P-NEW' AND pathway_id = 'stroke'"
            )
            .await,
            1,
            "{name}: the intake rule enrolled the new patient"
        );
        // The same visit's discharge again, under another control id and with another sex in
        // PID: the known patient is not rewritten, the encounter not doubled.
        let ack = hl7::handle(&pool, &hospital, "test", &a03("N-2", "F"), now).await;
        assert!(
            String::from_utf8_lossy(&ack).contains("MSA|AA|N-2"),
            "{name}"
        );
        assert_eq!(
            rows(&pool, "SELECT sex FROM patients WHERE id = 'P-NEW'", 1).await,
            ["male"],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM enrolments WHERE patient_id = 'P-NEW'"
            )
            .await,
            1,
            "{name}"
        );
        pool.close().await;
    }
}

//! The parser, the ADT reader and acknowledgements, one behaviour per test.

use jiff::Timestamp;
use proptest::prelude::*;

use super::ack::{self, AckCode};
use super::adt::{PatientClass, Sex, Trigger};
use super::message::{self, Charset, MAX_FIELD, MAX_MESSAGE};
use super::*;

const A01: &str = "MSH|^~\\&|HIS|H1|CAREPATH|CP|20240301083000+0800||ADT^A01^ADT_A01|MSG0001|P|2.5|||||CHN|UNICODE UTF-8\r\
EVN|A01|20240301083000||||20240301080000\r\
PID|1||P-001^^^H1^MR~99887766^^^^NI||张^三||19500412|M|||北京市朝阳区^^北京||13800000000^PRN^CP~^NET^Internet^zhang@example.cn|010-1234567^WPN^PH|zh\r\
PV1|1|I|NEURO^301^2|E|||||||||||||||V-1001|||||||||||||||||||||||||20240301081500\r\
DG1|1|I10|I63.9^Cerebral infarction^I10||20240301|A\r\
DG1|2|I10|I10^Hypertension^I10||20240301|W|||||||||1\r";

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

fn msg(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn adt(text: &str) -> Adt {
    read(&msg(text)).unwrap_or_else(|r| panic!("{text:?} refused: {}", r.problem))
}

fn refused(raw: &[u8]) -> Problem {
    match read(raw) {
        Ok(a) => panic!("accepted: {a:?}"),
        Err(r) => r.problem,
    }
}

/// A message of `trigger` with the given PID and PV1 (and no EVN, DG1).
fn simple(trigger: &str, pid: &str, pv1: &str) -> String {
    format!("MSH|^~\\&|HIS|H1|CP|CP|20240301083000||ADT^{trigger}|C1|P|2.4\r{pid}\r{pv1}\r")
}

#[test]
fn reads_an_admission() {
    let a = adt(A01);
    assert_eq!(a.trigger, Trigger::A01);
    assert_eq!(a.header.sending_application, "HIS");
    assert_eq!(a.header.sending_facility, "H1");
    assert_eq!(a.header.control_id, "MSG0001");
    assert_eq!(a.header.version, "2.5");
    assert_eq!(a.header.charset, Charset::Utf8);
    assert_eq!(a.header.charset_name, "UNICODE UTF-8");
    assert_eq!(
        a.event_time.unwrap().to_string(),
        "2024-03-01T00:00:00Z",
        "EVN-6 wins over EVN-2"
    );
    let p = &a.patient;
    assert_eq!(p.id, "P-001");
    assert_eq!(p.birth_date.as_deref(), Some("1950-04-12"));
    assert_eq!(p.sex, Some(Sex::Male));
    assert_eq!(p.name.as_deref(), Some("张三"));
    assert_eq!(p.phone.as_deref(), Some("13800000000"));
    assert_eq!(p.email.as_deref(), Some("zhang@example.cn"));
    assert_eq!(p.lang.as_deref(), Some("zh"));
    let v = a.visit.unwrap();
    assert_eq!(v.class, PatientClass::Inpatient);
    assert_eq!(v.department.as_deref(), Some("NEURO"));
    assert_eq!(v.acute, Some(true));
    assert_eq!(v.visit_number.as_deref(), Some("V-1001"));
    assert_eq!(
        v.admitted_at.unwrap().to_string(),
        "2024-03-01T00:15:00Z",
        "PV1-44"
    );
    assert_eq!(v.discharged_at, None);
    assert_eq!(a.diagnoses.len(), 2);
    assert_eq!(a.diagnoses[0].code, "I63.9");
    assert_eq!(a.diagnoses[0].kind.as_deref(), Some("A"));
    assert!(!a.diagnoses[0].principal, "DG1-15 = 1 names the second");
    assert!(a.diagnoses[1].principal);
}

#[test]
fn the_first_diagnosis_is_principal_when_none_says() {
    let text = A01.replace("|||||||||1\r", "\r");
    let a = adt(&text);
    assert!(a.diagnoses[0].principal);
    assert!(!a.diagnoses[1].principal);
}

#[test]
fn segments_may_end_in_lf_or_crlf() {
    for sep in ["\n", "\r\n"] {
        let a = adt(&A01.replace('\r', sep));
        assert_eq!(a.diagnoses.len(), 2);
        assert_eq!(a.patient.id, "P-001");
    }
}

#[test]
fn escapes_are_resolved() {
    let pid = "PID|1||P1||O\\T\\Brien\\F\\x^Ann\\S\\Marie\\E\\\\R\\\\X41\\\\H\\z\\N\\\\.br\\";
    let a = adt(&simple("A08", pid, ""));
    // Family name is subcomponent 1 of component 1: `O\T\Brien` is `O&Brien` → the family name.
    assert_eq!(
        a.patient.name.as_deref(),
        Some("Ann^Marie\\~Az\\.br\\ O&Brien|x")
    );
    let seps = message::Separators::STANDARD;
    assert_eq!(
        message::unescape("a\\X0D0A\\b\\XE5BCA0\\", &seps, Charset::Utf8).unwrap(),
        "a\r\nb张"
    );
    assert_eq!(
        message::unescape("a\\F", &seps, Charset::Utf8).unwrap(),
        "a\\F"
    );
    for bad in ["\\X4\\", "\\XZZ\\", "\\X\\", "\\XFF\\"] {
        assert!(
            message::unescape(bad, &seps, Charset::Utf8).is_err(),
            "{bad}"
        );
    }
    assert_eq!(
        message::unescape("\\XD5C5\\", &seps, Charset::Gb18030).unwrap(),
        "张"
    );
    let round = "a|b^c~d\\e&f\rg";
    assert_eq!(
        message::unescape(&message::escape(round, &seps), &seps, Charset::Utf8).unwrap(),
        "a|b^c~d\\e&f g"
    );
}

#[test]
fn other_delimiters_are_honoured() {
    let text = "MSH#:*!@#HIS#H1#CP#CP#20240301##ADT:A08#C9#P#2.3\rPID#1##P9:::H1##Li:Lei!T!x##19800101#F\r";
    let a = adt(text);
    assert_eq!(a.patient.id, "P9");
    assert_eq!(a.patient.sex, Some(Sex::Female));
    assert_eq!(a.patient.name.as_deref(), Some("Lei@x Li"));
    assert_eq!(a.visit, None);
}

#[test]
fn gb18030_is_decoded_and_invalid_bytes_refused() {
    for name in ["GB18030", "GB 18030-2000", "CHINESE-GB18030"] {
        let text = A01.replace("UNICODE UTF-8", name);
        let (bytes, _, unmappable) = encoding_rs::GB18030.encode(&text);
        assert!(!unmappable);
        let a = read(&bytes).unwrap_or_else(|r| panic!("{name}: {}", r.problem));
        assert_eq!(a.header.charset, Charset::Gb18030);
        assert_eq!(a.patient.name.as_deref(), Some("张三"));
    }
    // 0xFF begins no GB 18030 sequence; 0x81 0x30 0x81 is a four-byte sequence cut short.
    for bad in [&b"\xff"[..], b"\x81\x30\x81"] {
        let mut raw = A01.replace("UNICODE UTF-8", "GB18030").into_bytes();
        let at = raw.windows(3).position(|w| w == "张".as_bytes()).unwrap();
        raw.splice(at..at + 3, bad.iter().copied());
        let p = refused(&raw);
        assert!(p.reason.contains("not GB 18030"), "{p}");
        assert_eq!(p.location, "MSH-18");
    }
    // GB 18030 bytes declared (by default) as UTF-8.
    let plain = A01.replace("|CHN|UNICODE UTF-8", "");
    let (gb, _, _) = encoding_rs::GB18030.encode(&plain);
    let p = refused(&gb);
    assert!(p.reason.contains("not UTF-8"), "{p}");
    // Non-ASCII under ASCII.
    let p = refused(A01.replace("UNICODE UTF-8", "ASCII").as_bytes());
    assert!(p.reason.contains("not ASCII"), "{p}");
    let p = refused(A01.replace("UNICODE UTF-8", "8859/1").as_bytes());
    assert_eq!(p.location, "MSH-18");
    assert!(p.reason.contains("8859/1"), "{p}");
}

#[test]
fn each_trigger_reads() {
    let pid = "PID|1||P2||||19600101|F";
    let pv1 = &seg("PV1", &[(2, "I"), (3, "CARD"), (19, "V-2")]);
    for t in ["A01", "A02", "A03", "A04", "A08", "A11", "A13"] {
        let a = adt(&simple(t, pid, pv1));
        assert_eq!(a.trigger.as_str(), t);
        assert_eq!(a.visit.unwrap().visit_number.as_deref(), Some("V-2"));
    }
    // A04 without a visit number registers the patient only; it defaults to outpatient.
    let a = adt(&simple("A04", pid, "PV1|1|||R"));
    let v = a.visit.unwrap();
    assert_eq!(
        (v.class, v.visit_number, v.acute),
        (PatientClass::Outpatient, None, Some(false))
    );
    // A08 needs no PV1.
    assert_eq!(adt(&simple("A08", pid, "")).visit, None);
}

#[test]
fn the_event_time_fills_in_admission_and_discharge() {
    let text = "MSH|^~\\&|HIS|H1|CP|CP|20240301||ADT^A03|C1|P|2.5\rEVN|A03|20240310120000+0800\rPID|1||P2\rPV1|1|E|ER||||||||||||||||V-3\r";
    let v = adt(text).visit.unwrap();
    assert_eq!(v.class, PatientClass::Emergency);
    assert_eq!(v.discharged_at.unwrap().to_string(), "2024-03-10T04:00:00Z");
    assert_eq!(v.admitted_at, None);
}

#[test]
fn missing_required_fields_are_named() {
    let pid = "PID|1||P2";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            simple("A03", pid, "PV1|1|I"),
            "PV1-19",
            "PV1-19 (visit number) is required for A03",
        ),
        (simple("A11", pid, "PV1|1|I"), "PV1-19", "for A11"),
        (
            simple("A01", "PID|1", &seg("PV1", &[(2, "I"), (19, "V1")])),
            "PID-3",
            "PID-3 (patient identifier list) is required for A01",
        ),
        (
            simple("A01", pid, ""),
            "PV1",
            "the PV1 segment is required for A01",
        ),
        (
            simple("A01", "", &seg("PV1", &[(2, "I"), (19, "V1")])),
            "PID",
            "PID segment is required",
        ),
        (
            simple("A01", "PID|1||bad id!", ""),
            "PID-3",
            "carepath patient id",
        ),
        (
            simple("A01", &seg("PID", &[(3, "P1"), (7, "1950")]), ""),
            "PID-7",
            "PID-7 (date of birth)",
        ),
        (
            simple("A01", &seg("PID", &[(3, "P1"), (8, "X")]), ""),
            "PID-8",
            "is not M, F or U",
        ),
        (
            simple("A01", pid, &seg("PV1", &[(2, "Q"), (19, "V1")])),
            "PV1-2",
            "is not I, O or E",
        ),
        (
            simple(
                "A01",
                pid,
                &seg("PV1", &[(2, "I"), (19, "V1"), (44, "2024x")]),
            ),
            "PV1-44",
            "PV1-44 (admit date/time)",
        ),
        (
            simple("A01", &seg("PID", &[(3, "P1"), (13, "abc")]), ""),
            "PID-13",
            "telephone number",
        ),
        (
            simple(
                "A01",
                &seg("PID", &[(3, "P1"), (13, "^NET^Internet^nope")]),
                "",
            ),
            "PID-13",
            "e-mail",
        ),
        (simple("A05", pid, ""), "MSH-9.2", "A05"),
        (
            simple("A01", pid, &seg("PV1", &[(2, "I"), (19, "V1")])) + "DG1|1||^no code\r",
            "DG1-3",
            "DG1-3 (diagnosis code) is required",
        ),
        (
            simple("A01", pid, &seg("PV1", &[(2, "I"), (19, "V1")])) + "DG1|1||hypertension\r",
            "DG1-3",
            "not an ICD-10 code",
        ),
        (
            simple("A01", pid, &seg("PV1", &[(2, "I"), (19, "V1")])) + "DG1|1||I63.900x001\r",
            "DG1-3",
            "not an ICD-10 code",
        ),
        (
            simple("A01", pid, &seg("PV1", &[(2, "I"), (19, "V1")])) + "DG1|1||I10^HT^SNOMED\r",
            "DG1-3",
            "not ICD-10",
        ),
        (
            simple(
                "A03",
                pid,
                &seg(
                    "PV1",
                    &[(2, "I"), (19, "V1"), (44, "20240302"), (45, "20240301")],
                ),
            ),
            "PV1-45",
            "before PV1-44",
        ),
        (
            simple("A01", pid, "").replace("|H1|", "||"),
            "MSH-4",
            "MSH-4 (sending facility) is required",
        ),
        (
            simple("A01", pid, "").replace("|C1|", "||"),
            "MSH-10",
            "MSH-10 (message control id) is required",
        ),
        (
            simple("A01", pid, "").replace("|2.4", "|2.6"),
            "MSH-12",
            "2.6",
        ),
        (
            simple("A01", pid, "").replace("|P|", "|X|"),
            "MSH-11",
            "processing id",
        ),
        (
            simple("A01", pid, "").replace("ADT^", "ORU^"),
            "MSH-9",
            "not ADT",
        ),
    ];
    for (text, location, reason) in cases {
        let p = refused(text.as_bytes());
        assert_eq!(p.location, location, "{text:?}: {p}");
        assert!(
            p.reason.contains(reason),
            "{text:?}: `{}` lacks `{reason}`",
            p.reason
        );
    }
}

#[test]
fn malformed_framing_of_the_message_is_refused() {
    for (raw, expect) in [
        ("", "does not begin with an MSH"),
        ("PID|1||P1\r", "does not begin with an MSH"),
        ("MSH", "MSH-1"),
        ("MSH|^~\r", "MSH-2"),
        ("MSH|^^\\&|\r", "twice"),
        ("MSHa^~\\&|\r", "MSH-1"),
        ("MSH|^~\\&|H|F\rpid|1\r", "segment 2"),
        ("MSH|^~\\&|H|F\rPIDX\r", "segment 2"),
    ] {
        let p = refused(raw.as_bytes());
        assert!(p.reason.contains(expect), "{raw:?}: {p}");
    }
}

#[test]
fn sizes_are_bounded() {
    let huge = simple(
        "A08",
        &format!("PID|1||P1||{}", "x".repeat(MAX_FIELD + 1)),
        "",
    );
    let p = refused(huge.as_bytes());
    assert!(p.reason.contains("PID-5"), "{p}");
    let too_long = format!(
        "{}{}",
        simple("A08", "PID|1||P1", ""),
        "NTE|1|x\r".repeat(MAX_MESSAGE / 8)
    );
    let p = refused(too_long.as_bytes());
    assert!(p.reason.contains("at most 1048576"), "{p}");
}

#[test]
fn msh18_must_read_the_same_before_and_after_decoding() {
    // A GB 18030 lead byte before MSH-18 would hide a separator from a byte scan.
    let mut raw = b"MSH|^~\\&|HIS|\x81".to_vec();
    raw.extend_from_slice(b"|CP|CP|20240301||ADT^A08|C1|P|2.5|||||CHN|GB18030\rPID|1||P1\r");
    assert!(read(&raw).is_err());
}

fn at() -> Timestamp {
    "2024-03-01T00:30:00Z".parse().unwrap()
}

#[test]
fn acknowledgements_answer_in_kind() {
    let a = adt(A01);
    let ok = String::from_utf8(ack::build(&a.header, AckCode::Accepted, None, at())).unwrap();
    let segs: Vec<&str> = ok.split('\r').filter(|s| !s.is_empty()).collect();
    assert_eq!(segs.len(), 2, "{ok}");
    let msh: Vec<&str> = segs[0].split('|').collect();
    assert_eq!(
        &msh[2..6],
        ["CAREPATH", "CP", "HIS", "H1"],
        "sender and receiver swap"
    );
    assert_eq!(msh[6], "20240301083000+0800");
    assert_eq!(msh[8], "ACK^A01^ACK");
    assert_ne!(msh[9], "MSG0001");
    assert_eq!((msh[10], msh[11], msh[17]), ("P", "2.5", "UNICODE UTF-8"));
    assert_eq!(segs[1], "MSA|AA|MSG0001");

    let p = Problem::required(
        "PV1-19",
        "PV1-19 (visit number) is required for A03 | really".into(),
    );
    let ar = String::from_utf8(ack::build(&a.header, AckCode::Rejected, Some(&p), at())).unwrap();
    let segs: Vec<&str> = ar.split('\r').filter(|s| !s.is_empty()).collect();
    assert_eq!(
        segs[1],
        "MSA|AR|MSG0001|PV1-19 (visit number) is required for A03 \\F\\ really"
    );
    let err: Vec<&str> = segs[2].split('|').collect();
    assert_eq!(err[2], "PV1^1^19");
    assert_eq!(err[3], "101^Required field missing^HL70357");
    assert_eq!(err[4], "E");
    assert_eq!(
        err[8],
        "PV1-19 (visit number) is required for A03 \\F\\ really"
    );

    // In GB 18030, version 2.3 style.
    let text = A01
        .replace("UNICODE UTF-8", "GB18030")
        .replace("|2.5|", "|2.3|");
    let (bytes, _, _) = encoding_rs::GB18030.encode(&text);
    let a = read(&bytes).unwrap();
    let p = Problem::application("病人 P-001 不存在".into());
    let ae = ack::build(&a.header, AckCode::Error, Some(&p), at());
    assert!(
        std::str::from_utf8(&ae).is_err(),
        "GB 18030 bytes, not UTF-8"
    );
    let (decoded, _, bad) = encoding_rs::GB18030.decode(&ae);
    assert!(!bad);
    assert!(decoded.contains("|ACK^A01|"), "{decoded}");
    assert!(decoded.contains("|2.3||||||GB18030\r"), "{decoded}");
    assert!(
        decoded.contains("MSA|AE|MSG0001|病人 P-001 不存在"),
        "{decoded}"
    );
}

#[test]
fn an_unreadable_message_is_still_acknowledged_to_its_sender() {
    let raw = b"MSH|^~\\&|HIS|H1|CP|CP|2024||ADT^A01|C77|P|2.4\rPID|1||\xff\xfe\r";
    let Refused { header, problem: p } = *read(raw).unwrap_err();
    assert!(p.reason.contains("not UTF-8"));
    assert_eq!(header.control_id, "C77");
    assert_eq!(header.sending_application, "HIS");
    let ar = String::from_utf8(ack::build(&header, AckCode::Rejected, Some(&p), at())).unwrap();
    assert!(ar.contains("\rMSA|AR|C77|"), "{ar}");
    // Nothing readable at all.
    let header = read(b"\x00\x01garbage").unwrap_err().header;
    let ar = String::from_utf8(ack::build(&header, AckCode::Rejected, None, at())).unwrap();
    assert!(ar.starts_with("MSH|^~\\&|"), "{ar}");
    assert!(ar.contains("\rMSA|AR|\r"), "{ar}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let outcome = read(&bytes);
        let header = match &outcome {
            Ok(a) => a.header.clone(),
            Err(r) => r.header.clone(),
        };
        let _ = ack::build(&header, AckCode::Rejected, outcome.as_ref().err().map(|r| &r.problem), at());
    }

    #[test]
    fn mutated_messages_never_panic(
        cut in 0usize..A01.len(),
        insert in proptest::collection::vec(any::<u8>(), 0..12),
        charset in prop::sample::select(vec!["GB18030", "ASCII", "UNICODE UTF-8", ""]),
    ) {
        let mut raw = A01.replace("UNICODE UTF-8", charset).into_bytes();
        let cut = cut.min(raw.len());
        raw.splice(cut..cut, insert);
        let outcome = read(&raw);
        let header = match &outcome {
            Ok(a) => a.header.clone(),
            Err(r) => r.header.clone(),
        };
        let _ = ack::build(&header, AckCode::Error, None, at());
    }
}

mod framing {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::super::mllp::{FrameError, FrameReader, Limits, frame};

    fn limits(max_frame: usize) -> Limits {
        Limits {
            max_frame,
            read_timeout: Duration::from_millis(200),
            max_connections: 4,
        }
    }

    #[tokio::test]
    async fn frames_split_and_joined_across_reads() {
        let (mut tx, rx) = tokio::io::duplex(7);
        let mut frames = FrameReader::new(rx, limits(100));
        let mut wire = frame(b"MSH|one");
        wire.extend_from_slice(b"\r\n");
        wire.extend(frame(b"MSH|two\x1cx"));
        wire.extend(frame(b""));
        tokio::spawn(async move {
            for chunk in wire.chunks(3) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        assert_eq!(frames.next().await.unwrap().unwrap(), b"MSH|one");
        assert_eq!(frames.next().await.unwrap().unwrap(), b"MSH|two\x1cx");
        assert_eq!(frames.next().await.unwrap().unwrap(), b"");
        assert!(
            frames.next().await.unwrap().is_none(),
            "closed between frames"
        );
    }

    #[tokio::test]
    async fn oversize_garbage_truncation_and_silence_end_the_stream() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut frames = FrameReader::new(rx, limits(10));
        tx.write_all(&frame(b"MSH|0123456789abc")).await.unwrap();
        match frames.next().await {
            Err(FrameError::Oversize(prefix)) => assert!(prefix.starts_with(b"MSH|0123")),
            other => panic!("{other:?}"),
        }

        let (mut tx, rx) = tokio::io::duplex(64);
        let mut frames = FrameReader::new(rx, limits(10));
        tx.write_all(b"MSH|no start block").await.unwrap();
        assert!(matches!(frames.next().await, Err(FrameError::Garbage)));

        let (mut tx, rx) = tokio::io::duplex(64);
        let mut frames = FrameReader::new(rx, limits(10));
        tx.write_all(b"\x0bMSH|").await.unwrap();
        drop(tx);
        assert!(matches!(frames.next().await, Err(FrameError::Truncated)));

        let (_tx, rx) = tokio::io::duplex(64);
        let mut frames = FrameReader::new(rx, limits(10));
        assert!(matches!(frames.next().await, Err(FrameError::TimedOut)));
    }
}

//! The delivery configuration (TOML), checked whole at start: every problem is reported at once,
//! each with the key it is about, and nothing is sent with a half-valid configuration.
//!
//! Secrets are never in the file: the file names the environment variables that hold them
//! (`secret_env`, `password_env`, `contact_key_env`). See `config/delivery.example.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use lettre::Tokio1Executor;
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::Deserialize;

use super::policy::QuietHours;
use super::template::Template;
use crate::crypto::{CONTACT_KEY_ENV, ContactKey};

/// The channels a follow-up can name.
pub const CHANNELS: [&str; 4] = ["wechat", "sms", "email", "phone"];

#[derive(Debug, thiserror::Error)]
#[error("delivery configuration {source_name}:\n  {}", problems.join("\n  "))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

// ------------------------------------------------------------------------------------------------
// The file as written

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    dispatch: RawDispatch,
    #[serde(default)]
    channels: BTreeMap<String, RawChannel>,
    #[serde(default)]
    templates: BTreeMap<String, BTreeMap<String, RawTemplate>>,
    #[serde(default)]
    hospitals: BTreeMap<String, RawText>,
    #[serde(default)]
    messages: RawMessages,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    batch_size: Option<i64>,
    batches_in_flight: Option<i64>,
    concurrency: Option<i64>,
    max_attempts: Option<i64>,
    attempts_per_channel: Option<i64>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    lease: Option<String>,
    quiet_hours: Option<String>,
    daily_cap: Option<i64>,
    language: Option<String>,
    time_zone: Option<String>,
    contact_key_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
enum RawChannel {
    Webhook(RawWebhook),
    Smtp(RawSmtp),
    Task(RawTask),
    Log(RawLog),
}

impl RawChannel {
    fn transport(&self) -> &'static str {
        match self {
            RawChannel::Webhook(_) => "webhook",
            RawChannel::Smtp(_) => "smtp",
            RawChannel::Task(_) => "task",
            RawChannel::Log(_) => "log",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret_env: String,
    timeout: Option<String>,
    #[serde(default)]
    allow_insecure_http: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    mode: String,
    from: String,
    username: Option<String>,
    password_env: Option<String>,
    timeout: Option<String>,
    /// A PEM file of extra roots to trust (a hospital's own CA).
    ca_file: Option<String>,
    hello_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTask {
    role: Option<String>,
    due: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    zh: String,
    en: String,
    subject_zh: Option<String>,
    subject_en: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    zh: String,
    en: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMessages {
    /// What `{name}` becomes when the patient gave no name.
    no_name: Option<RawText>,
    /// The e-mail subject when a template has none.
    subject: Option<RawText>,
}

// ------------------------------------------------------------------------------------------------
// The checked configuration

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s.trim().to_ascii_lowercase().as_str() {
            "zh" | "zh-cn" | "zh-hans" => Some(Lang::Zh),
            "en" | "en-gb" | "en-us" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }
}

/// A text in both languages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub zh: String,
    pub en: String,
}

impl Text {
    pub fn get(&self, lang: Lang) -> &str {
        match lang {
            Lang::Zh => &self.zh,
            Lang::En => &self.en,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MessageTemplate {
    pub zh: Template,
    pub en: Template,
    pub subject_zh: Option<Template>,
    pub subject_en: Option<Template>,
}

impl MessageTemplate {
    pub fn body(&self, lang: Lang) -> &Template {
        match lang {
            Lang::Zh => &self.zh,
            Lang::En => &self.en,
        }
    }

    pub fn subject(&self, lang: Lang) -> Option<&Template> {
        match lang {
            Lang::Zh => self.subject_zh.as_ref(),
            Lang::En => self.subject_en.as_ref(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub batch_size: i64,
    /// Batches claimed, sent and recorded at once, so one slow answer does not hold up the rest.
    pub batches_in_flight: usize,
    /// Sends in flight at once, over all batches.
    pub concurrency: usize,
    /// Attempts (claims) before a message is parked.
    pub max_attempts: i64,
    /// Attempts on one channel, after transient failures, before falling back to the next.
    pub attempts_per_channel: i64,
    pub backoff_base: i64,
    pub backoff_max: i64,
    /// How long a claimed row is ours; past it another dispatcher reclaims and resends it.
    pub lease: i64,
    pub quiet_hours: Option<QuietHours>,
    /// Messages per patient per local day; 0 for no cap.
    pub daily_cap: i64,
    pub language: Lang,
    pub time_zone: String,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            batch_size: 100,
            batches_in_flight: 4,
            concurrency: 32,
            max_attempts: 5,
            attempts_per_channel: 2,
            backoff_base: 60,
            backoff_max: 3600,
            lease: 600,
            quiet_hours: Some(super::policy::DEFAULT_QUIET_HOURS),
            daily_cap: 3,
            language: Lang::Zh,
            time_zone: "Asia/Shanghai".into(),
        }
    }
}

/// An HTTP gateway (SMS, WeChat): a signed JSON POST.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub client: reqwest::Client,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    Plain,
    Starttls,
    Tls,
}

#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub mode: SmtpMode,
    pub from: Mailbox,
    pub timeout: Duration,
    pub transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The role the call task goes to; the pathway's owner role (its case manager) when unset.
    pub role: Option<String>,
    pub due: i64,
}

#[derive(Debug, Clone)]
pub enum ChannelConfig {
    Webhook(WebhookConfig),
    Smtp(Box<SmtpConfig>),
    Task(TaskConfig),
    /// Development: the message is logged (its key and template, never its text) and counted sent.
    Log,
}

impl ChannelConfig {
    pub fn needs_contact(&self) -> bool {
        matches!(self, ChannelConfig::Webhook(_) | ChannelConfig::Smtp(_))
    }

    /// The longest one send on this channel may take before it counts as timed out. An SMTP
    /// exchange is several commands, each with the configured time-out: it gets three of them.
    pub fn deadline(&self) -> Duration {
        match self {
            ChannelConfig::Webhook(w) => w.timeout,
            ChannelConfig::Smtp(s) => s.timeout * 3,
            ChannelConfig::Task(_) | ChannelConfig::Log => Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub dispatch: DispatchSettings,
    pub channels: BTreeMap<String, ChannelConfig>,
    /// By (pathway, template); `*` stands for any.
    pub templates: BTreeMap<(String, String), MessageTemplate>,
    /// Display names by institution id, overriding the institution's name in the database.
    pub hospitals: BTreeMap<String, Text>,
    pub no_name: Text,
    pub default_subject: Template,
    pub default_subject_en: Template,
    pub contact_key: Option<ContactKey>,
}

impl DeliveryConfig {
    /// Reads and checks a configuration file; secrets come from the process environment.
    pub fn load(path: &Path) -> Result<DeliveryConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            problems: vec![format!("cannot be read: {e}")],
        })?;
        DeliveryConfig::parse(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// Checks a configuration text; `env` looks up the environment variables it names.
    pub fn parse(
        text: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DeliveryConfig, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        let mut p = Vec::new();
        let dispatch = dispatch_settings(&raw.dispatch, &mut p);

        let mut channels = BTreeMap::new();
        for (name, ch) in &raw.channels {
            let at = format!("channels.{name}");
            let allowed: &[&str] = match name.as_str() {
                "wechat" | "sms" => &["webhook", "log"],
                "email" => &["smtp", "log"],
                "phone" => &["task", "log"],
                _ => {
                    p.push(format!(
                        "{at}: unknown channel `{name}`; channels are {}",
                        CHANNELS.join(", ")
                    ));
                    continue;
                }
            };
            if !allowed.contains(&ch.transport()) {
                p.push(format!(
                    "{at}: transport `{}` cannot carry {name}; use {}",
                    ch.transport(),
                    allowed.join(" or ")
                ));
                continue;
            }
            let built = match ch {
                RawChannel::Webhook(w) => {
                    webhook(&at, w, dispatch.concurrency, env, &mut p).map(ChannelConfig::Webhook)
                }
                RawChannel::Smtp(s) => {
                    smtp(&at, s, env, &mut p).map(|s| ChannelConfig::Smtp(Box::new(s)))
                }
                RawChannel::Task(t) => Some(ChannelConfig::Task(TaskConfig {
                    role: t.role.clone().filter(|r| !r.trim().is_empty()),
                    due: t
                        .due
                        .as_deref()
                        .map(|d| seconds(&format!("{at}.due"), d, &mut p))
                        .unwrap_or(86_400),
                })),
                RawChannel::Log(_) => Some(ChannelConfig::Log),
            };
            if let Some(b) = built {
                channels.insert(name.clone(), b);
            }
        }
        // A call task needs nothing outside the database: the phone channel works unless replaced.
        channels
            .entry("phone".to_string())
            .or_insert(ChannelConfig::Task(TaskConfig {
                role: None,
                due: 86_400,
            }));
        if !raw.channels.keys().any(|k| k != "phone") {
            p.push("channels: no channel is configured besides phone; configure at least one of wechat, sms, email (transport = \"log\" for development)".into());
        }

        let mut templates = BTreeMap::new();
        for (pathway, by_id) in &raw.templates {
            for (id, t) in by_id {
                let at = format!("templates.{pathway}.{id}");
                let mut parse = |field: &str, s: &str| match Template::parse(s) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        p.push(format!("{at}.{field}: {e}"));
                        None
                    }
                };
                let zh = parse("zh", &t.zh);
                let en = parse("en", &t.en);
                let sz = t.subject_zh.as_deref().map(|s| parse("subject_zh", s));
                let se = t.subject_en.as_deref().map(|s| parse("subject_en", s));
                if t.zh.trim().is_empty() || t.en.trim().is_empty() {
                    p.push(format!("{at}: zh and en must both be written"));
                }
                if let (Some(zh), Some(en)) = (zh, en) {
                    templates.insert(
                        (pathway.clone(), id.clone()),
                        MessageTemplate {
                            zh,
                            en,
                            subject_zh: sz.flatten(),
                            subject_en: se.flatten(),
                        },
                    );
                }
            }
        }
        if raw.templates.is_empty() {
            p.push("templates: none are configured; add [templates.<pathway>.<template>] with zh and en (or [templates.\"*\".\"*\"] as the default)".into());
        }

        let hospitals = raw
            .hospitals
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Text {
                        zh: v.zh.clone(),
                        en: v.en.clone(),
                    },
                )
            })
            .collect();
        let no_name = raw
            .messages
            .no_name
            .as_ref()
            .map(|t| Text {
                zh: t.zh.clone(),
                en: t.en.clone(),
            })
            .unwrap_or(Text {
                zh: "您".into(),
                en: "there".into(),
            });
        let (subject_zh, subject_en) = match &raw.messages.subject {
            Some(s) => (s.zh.clone(), s.en.clone()),
            None => (
                "{hospital}随访提醒".to_string(),
                "A follow-up from {hospital}".to_string(),
            ),
        };
        let mut subject = |field: &str, s: &str| {
            Template::parse(s).unwrap_or_else(|e| {
                p.push(format!("messages.subject.{field}: {e}"));
                Template::parse("").unwrap_or_else(|_| unreachable!())
            })
        };
        let default_subject = subject("zh", &subject_zh);
        let default_subject_en = subject("en", &subject_en);

        let key_env = raw
            .dispatch
            .contact_key_env
            .clone()
            .unwrap_or_else(|| CONTACT_KEY_ENV.to_string());
        let needs_key: Vec<&str> = raw
            .channels
            .iter()
            .filter(|(_, c)| matches!(c, RawChannel::Webhook(_) | RawChannel::Smtp(_)))
            .map(|(n, _)| n.as_str())
            .collect();
        let contact_key = match env(&key_env).filter(|v| !v.trim().is_empty()) {
            Some(v) => match ContactKey::parse(&v) {
                Ok(k) => Some(k),
                Err(e) => {
                    p.push(format!("{key_env}: {e}"));
                    None
                }
            },
            None if !needs_key.is_empty() => {
                p.push(format!(
                    "{key_env} is not set: the {} channel(s) need patients' contact details, which are encrypted with it",
                    needs_key.join(", ")
                ));
                None
            }
            None => None,
        };

        // A batch must be sent well within its lease, or another dispatcher reclaims rows that are
        // still in flight (harmless with idempotency keys, but wasteful).
        let longest = channels
            .values()
            .map(ChannelConfig::deadline)
            .max()
            .unwrap_or_default();
        let per_batch = (dispatch.concurrency / dispatch.batches_in_flight.max(1)).max(1);
        let waves = (dispatch.batch_size.max(1) as usize).div_ceil(per_batch) as u32;
        let worst = longest * waves;
        if worst.as_secs() as i64 >= dispatch.lease {
            p.push(format!(
                "dispatch.lease ({}s) is not longer than one batch may take to send ({}s: {} row(s) at {} at once, {}s each at worst); raise lease, or lower batch_size or the time-outs",
                dispatch.lease,
                worst.as_secs(),
                dispatch.batch_size,
                per_batch,
                longest.as_secs()
            ));
        }
        if !p.is_empty() {
            return Err(fail(p));
        }
        Ok(DeliveryConfig {
            dispatch,
            channels,
            templates,
            hospitals,
            no_name,
            default_subject,
            default_subject_en,
            contact_key,
        })
    }

    /// The template for a follow-up: exact, then any template of the pathway, then the template
    /// id in any pathway, then the default.
    pub fn template(&self, pathway: &str, template: &str) -> Option<&MessageTemplate> {
        let k = |p: &str, t: &str| (p.to_string(), t.to_string());
        self.templates
            .get(&k(pathway, template))
            .or_else(|| self.templates.get(&k(pathway, "*")))
            .or_else(|| self.templates.get(&k("*", template)))
            .or_else(|| self.templates.get(&k("*", "*")))
    }

    pub fn subject_default(&self, lang: Lang) -> &Template {
        match lang {
            Lang::Zh => &self.default_subject,
            Lang::En => &self.default_subject_en,
        }
    }
}

fn dispatch_settings(r: &RawDispatch, p: &mut Vec<String>) -> DispatchSettings {
    let d = DispatchSettings::default();
    let mut at_least = |key: &str, v: Option<i64>, min: i64, default: i64| match v {
        Some(v) if v < min => {
            p.push(format!("dispatch.{key} must be at least {min} (found {v})"));
            default
        }
        Some(v) => v,
        None => default,
    };
    let batch_size = at_least("batch_size", r.batch_size, 1, d.batch_size);
    let batches_in_flight = at_least(
        "batches_in_flight",
        r.batches_in_flight,
        1,
        d.batches_in_flight as i64,
    ) as usize;
    let concurrency = at_least("concurrency", r.concurrency, 1, d.concurrency as i64) as usize;
    let max_attempts = at_least("max_attempts", r.max_attempts, 1, d.max_attempts);
    let attempts_per_channel = at_least(
        "attempts_per_channel",
        r.attempts_per_channel,
        1,
        d.attempts_per_channel,
    );
    let daily_cap = at_least("daily_cap", r.daily_cap, 0, d.daily_cap);
    let mut secs = |key: &str, v: &Option<String>, default: i64| {
        v.as_deref()
            .map(|s| seconds(&format!("dispatch.{key}"), s, p))
            .unwrap_or(default)
    };
    let backoff_base = secs("backoff_base", &r.backoff_base, d.backoff_base);
    let backoff_max = secs("backoff_max", &r.backoff_max, d.backoff_max);
    let lease = secs("lease", &r.lease, d.lease);
    if backoff_max < backoff_base {
        p.push("dispatch.backoff_max must not be shorter than dispatch.backoff_base".into());
    }
    if lease < 1 {
        p.push("dispatch.lease must be at least 1s".into());
    }
    let quiet_hours = match r.quiet_hours.as_deref().map(str::trim) {
        None => d.quiet_hours,
        Some("off") | Some("none") | Some("") => None,
        Some(s) => match QuietHours::parse(s) {
            Ok(q) => q,
            Err(e) => {
                p.push(format!("dispatch.quiet_hours: {e}"));
                None
            }
        },
    };
    let language = match r.language.as_deref() {
        None => d.language,
        Some(l) => Lang::parse(l).unwrap_or_else(|| {
            p.push(format!("dispatch.language: `{l}` is not zh or en"));
            d.language
        }),
    };
    let time_zone = match r.time_zone.as_deref() {
        None => d.time_zone,
        Some(z) => {
            if jiff::tz::TimeZone::get(z).is_err() {
                p.push(format!(
                    "dispatch.time_zone: `{z}` is not an IANA time zone"
                ));
            }
            z.to_string()
        }
    };
    DispatchSettings {
        batch_size,
        batches_in_flight,
        concurrency,
        max_attempts,
        attempts_per_channel,
        backoff_base,
        backoff_max,
        lease,
        quiet_hours,
        daily_cap,
        language,
        time_zone,
    }
}

/// A duration such as `500ms`, `30s`, `5m`, `2h` or `1d`, in whole seconds (at least 1 for a
/// positive value).
fn seconds(at: &str, s: &str, p: &mut Vec<String>) -> i64 {
    match duration(s) {
        Ok(d) => d.as_millis().div_ceil(1000) as i64,
        Err(e) => {
            p.push(format!("{at}: {e}"));
            0
        }
    }
}

pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; write e.g. 500ms, 30s, 5m, 2h or 1d"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 30s, 5m, 2h or 1d"))?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n * 1000,
        "m" | "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        u => return Err(format!("`{u}` is not a unit; use ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(ms))
}

fn secret(
    at: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Option<String> {
    match env(var).filter(|v| !v.is_empty()) {
        Some(v) => Some(v),
        None => {
            p.push(format!("{at}: the environment variable {var} is not set"));
            None
        }
    }
}

fn webhook(
    at: &str,
    w: &RawWebhook,
    concurrency: usize,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Option<WebhookConfig> {
    let before = p.len();
    let url = w.url.trim().to_string();
    match url.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => {}
        Some(("http", rest)) if !rest.is_empty() => {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            let loopback =
                matches!(host, "127.0.0.1" | "localhost" | "[::1]") || host.starts_with("127.");
            if !loopback && !w.allow_insecure_http {
                p.push(format!("{at}.url: `{url}` is plain http to another host, which would send contact details in clear; use https (or allow_insecure_http = true inside a trusted network)"));
            }
        }
        _ => p.push(format!("{at}.url: `{url}` is not an http(s) URL")),
    }
    let secret = secret(&format!("{at}.secret_env"), &w.secret_env, env, p);
    if secret.as_ref().is_some_and(|s| s.len() < 16) {
        p.push(format!(
            "{at}.secret_env: the secret in {} is shorter than 16 characters",
            w.secret_env
        ));
    }
    let timeout = match w.timeout.as_deref().map(duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            p.push(format!("{at}.timeout must be positive"));
            Duration::from_secs(10)
        }
        Some(Err(e)) => {
            p.push(format!("{at}.timeout: {e}"));
            Duration::from_secs(10)
        }
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency)
        .user_agent(concat!("carepath/", env!("CARGO_PKG_VERSION")))
        .build();
    let client = match client {
        Ok(c) => Some(c),
        Err(e) => {
            p.push(format!("{at}: cannot build the HTTP client: {e}"));
            None
        }
    };
    if p.len() > before {
        return None;
    }
    Some(WebhookConfig {
        url,
        secret: secret?.into_bytes(),
        timeout,
        client: client?,
    })
}

fn smtp(
    at: &str,
    s: &RawSmtp,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Option<SmtpConfig> {
    let before = p.len();
    let mode = match s.mode.as_str() {
        "plain" => SmtpMode::Plain,
        "starttls" => SmtpMode::Starttls,
        "tls" => SmtpMode::Tls,
        m => {
            p.push(format!("{at}.mode: `{m}` is not plain, starttls or tls"));
            SmtpMode::Tls
        }
    };
    let host = s.host.trim().to_string();
    if host.is_empty() {
        p.push(format!("{at}.host is empty"));
    }
    let port = s.port.unwrap_or(match mode {
        SmtpMode::Plain => 25,
        SmtpMode::Starttls => 587,
        SmtpMode::Tls => 465,
    });
    let from: Option<Mailbox> = match s.from.parse() {
        Ok(m) => Some(m),
        Err(e) => {
            p.push(format!("{at}.from: `{}` is not a mailbox ({e})", s.from));
            None
        }
    };
    let timeout = match s.timeout.as_deref().map(duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            p.push(format!("{at}.timeout must be positive"));
            Duration::from_secs(10)
        }
        Some(Err(e)) => {
            p.push(format!("{at}.timeout: {e}"));
            Duration::from_secs(10)
        }
    };
    let credentials = match (&s.username, &s.password_env) {
        (Some(u), Some(var)) => secret(&format!("{at}.password_env"), var, env, p)
            .map(|pw| Credentials::new(u.clone(), pw)),
        (None, None) => None,
        _ => {
            p.push(format!("{at}: username and password_env go together"));
            None
        }
    };
    if credentials.is_some() && mode == SmtpMode::Plain {
        p.push(format!("{at}: a password over mode = \"plain\" would cross the network in clear; use starttls or tls"));
    }
    let tls = if mode == SmtpMode::Plain {
        None
    } else {
        let mut b = TlsParameters::builder(host.clone());
        if let Some(file) = &s.ca_file {
            match std::fs::read(file) {
                Ok(pem) => match Certificate::from_pem(&pem) {
                    Ok(c) => b = b.add_root_certificate(c),
                    Err(e) => p.push(format!(
                        "{at}.ca_file: `{file}` is not a PEM certificate: {e}"
                    )),
                },
                Err(e) => p.push(format!("{at}.ca_file: cannot read `{file}`: {e}")),
            }
        }
        match b.build_rustls() {
            Ok(t) => Some(t),
            Err(e) => {
                p.push(format!("{at}: TLS cannot be set up: {e}"));
                None
            }
        }
    };
    if p.len() > before {
        return None;
    }
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
        .port(port)
        .timeout(Some(timeout));
    b = match (mode, tls) {
        (SmtpMode::Starttls, Some(t)) => b.tls(Tls::Required(t)),
        (SmtpMode::Tls, Some(t)) => b.tls(Tls::Wrapper(t)),
        _ => b.tls(Tls::None),
    };
    if let Some(c) = credentials {
        b = b.credentials(c);
    }
    if let Some(h) = &s.hello_name {
        b = b.hello_name(ClientId::Domain(h.clone()));
    }
    Some(SmtpConfig {
        host,
        port,
        mode,
        from: from?,
        timeout,
        transport: b.build(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::Time;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn env(k: &str) -> Option<String> {
        match k {
            "CAREPATH_CONTACT_KEY" => Some(KEY.into()),
            "SMS_SECRET" | "WECHAT_SECRET" => Some("0123456789abcdef0123".into()),
            "SMTP_PASSWORD" => Some("hunter2".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<DeliveryConfig, ConfigError> {
        DeliveryConfig::parse(text, "test.toml", &env)
    }

    const GOOD: &str = r#"
[dispatch]
max_attempts = 4
backoff_base = "30s"
quiet_hours = "22:00-07:30"

[channels.sms]
transport = "webhook"
url = "https://sms.example.org/send"
secret_env = "SMS_SECRET"
timeout = "5s"

[channels.email]
transport = "smtp"
host = "smtp.example.org"
mode = "starttls"
from = "Carepath <noreply@example.org>"
username = "carepath"
password_env = "SMTP_PASSWORD"

[channels.wechat]
transport = "log"

[templates."*"."*"]
zh = "{name}您好，{hospital}提醒您查看随访消息。"
en = "Hello {name}, {hospital} has a follow-up message for you."

[templates.wound_care.wound_check]
zh = "{name}您好，请于{date}前查看伤口。"
en = "Hello {name}, please check your wound by {date}."
"#;

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../config/delivery.example.toml");
        let c = DeliveryConfig::parse(text, "delivery.example.toml", &|k| match k {
            "CAREPATH_CONTACT_KEY" => Some(KEY.into()),
            _ => Some("0123456789abcdef0123456789abcdef".into()),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.channels.contains_key("sms"));
        assert!(c.template("breast_cancer_surgery", "anything").is_some());
    }

    #[test]
    fn a_good_file_and_its_defaults() {
        let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.dispatch.max_attempts, 4);
        assert_eq!(c.dispatch.backoff_base, 30);
        assert_eq!(c.dispatch.daily_cap, 3);
        assert_eq!(
            c.dispatch.quiet_hours.unwrap().end,
            Time::constant(7, 30, 0, 0)
        );
        assert!(matches!(c.channels["phone"], ChannelConfig::Task(_)));
        assert!(matches!(c.channels["wechat"], ChannelConfig::Log));
        match &c.channels["email"] {
            ChannelConfig::Smtp(s) => {
                assert_eq!(s.port, 587);
                assert_eq!(s.mode, SmtpMode::Starttls);
            }
            other => panic!("{other:?}"),
        }
        assert!(c.template("wound_care", "wound_check").is_some());
        assert!(c.template("other", "x").is_some());
        // Secrets never show in Debug.
        let shown = format!("{c:?}");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let bad = r#"
[dispatch]
max_attempts = 0
quiet_hours = "9pm-8am"
language = "fr"
lease = "5 parsecs"

[channels.sms]
transport = "webhook"
url = "http://sms.example.org/send"
secret_env = "MISSING_SECRET"

[channels.fax]
transport = "log"

[channels.wechat]
transport = "smtp"
host = "x"
mode = "plain"
from = "a@b.c"

[channels.email]
transport = "smtp"
host = "smtp.example.org"
mode = "ssl"
from = "not a mailbox"

[templates.wound_care.wound_check]
zh = "您的{diagnosis}随访"
en = "Hello {name"
"#;
        let e = parse(bad).unwrap_err().to_string();
        for expected in [
            "dispatch.max_attempts must be at least 1 (found 0)",
            "dispatch.quiet_hours: `9pm` is not HH:MM",
            "dispatch.language: `fr` is not zh or en",
            "dispatch.lease: ",
            "channels.sms.url: `http://sms.example.org/send` is plain http",
            "channels.sms.secret_env: the environment variable MISSING_SECRET is not set",
            "channels.fax: unknown channel `fax`",
            "channels.wechat: transport `smtp` cannot carry wechat; use webhook or log",
            "channels.email.mode: `ssl` is not plain, starttls or tls",
            "channels.email.from: `not a mailbox` is not a mailbox",
            "templates.wound_care.wound_check.zh: unknown variable {diagnosis}",
            "templates.wound_care.wound_check.en: `{name` is not closed",
        ] {
            assert!(e.contains(expected), "missing `{expected}` in:\n{e}");
        }
    }

    #[test]
    fn syntax_and_unknown_keys_are_located() {
        let e = parse("[dispatch]\nmax_attempt = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("unknown field `max_attempt`"), "{e}");
        let e = parse("[channels.sms]\ntransport = \"webhook\"\nurl = \"https://x\"\nsecret_env = \"SMS_SECRET\"\ntimout = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `timout`"), "{e}");
        let e = parse("[channels.sms]\ntransport = \"carrier-pigeon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("carrier-pigeon"), "{e}");
    }

    #[test]
    fn the_contact_key_is_required_when_a_channel_needs_contacts() {
        let text = GOOD;
        let e = DeliveryConfig::parse(text, "t", &|k| {
            if k == "CAREPATH_CONTACT_KEY" {
                None
            } else {
                env(k)
            }
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("CAREPATH_CONTACT_KEY is not set"), "{e}");
        assert!(e.contains("email, sms"), "{e}");
        // Log-only development needs no key.
        let dev = "[channels.sms]\ntransport = \"log\"\n[templates.\"*\".\"*\"]\nzh = \"x\"\nen = \"y\"\n";
        assert!(DeliveryConfig::parse(dev, "t", &|_| None).is_ok());
        // A plain-text password is refused.
        let e = parse(
            "[channels.email]\ntransport = \"smtp\"\nhost = \"h\"\nmode = \"plain\"\nfrom = \"a@b.c\"\nusername = \"u\"\npassword_env = \"SMTP_PASSWORD\"\n[templates.\"*\".\"*\"]\nzh = \"x\"\nen = \"y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("in clear"), "{e}");
    }

    #[test]
    fn the_lease_must_outlast_a_batch() {
        let text = |lease: &str| {
            format!(
                "[dispatch]\nlease = \"{lease}\"\nbatch_size = 100\nconcurrency = 8\nbatches_in_flight = 1\n\
                 [channels.sms]\ntransport = \"webhook\"\nurl = \"https://sms.example.org\"\nsecret_env = \"SMS_SECRET\"\ntimeout = \"10s\"\n\
                 [templates.\"*\".\"*\"]\nzh = \"x\"\nen = \"y\"\n"
            )
        };
        let e = parse(&text("1m")).unwrap_err().to_string();
        assert!(
            e.contains("dispatch.lease (60s) is not longer than one batch may take to send (130s"),
            "{e}"
        );
        assert!(parse(&text("3m")).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(duration("5").is_err());
        assert!(duration("5y").is_err());
    }
}

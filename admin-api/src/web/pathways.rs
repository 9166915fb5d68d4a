//! The informaticist's pages: the published pathways with their versions, a version's state
//! graph drawn as SVG, and a form that validates an uploaded pathway file through the same
//! compilation `POST /pathways` runs, showing every diagnostic with its file, line, column, code
//! and hint, and publishing it when asked and clean.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use carepath_dsl::{Diagnostic, Pathway, Trigger};
use carepath_engine::store::queries::AuditEntry;
use carepath_engine::svg::escape;
use maud::{Markup, PreEscaped, html};

use super::layout::{self, Lang, page, url_encode};
use super::session::Staff;
use crate::auth::{Module, allowed};
use crate::handlers::catalog::{Compiled, compile, publish_upload, upload_name};
use crate::{ApiError, AppState};

/// The most an uploaded file may hold.
const MAX_UPLOAD: usize = 512 * 1024;

fn upload_form(lang: Lang, staff: &Staff, source: &str) -> Markup {
    html! {
        section class="card" aria-labelledby="upload-title" {
            h2 id="upload-title" { (lang.t("校验路径文件", "Validate a pathway file")) }
            form method="post" action="/app/pathways/validate" enctype="multipart/form-data" id="upload-form" {
                input type="hidden" name="csrf" value=(staff.csrf);
                p {
                    label for="u-file" { (lang.t("路径文件（.yaml 或 .rhai）", "Pathway file (.yaml or .rhai)")) }
                    input id="u-file" name="file" type="file" accept=".yaml,.yml,.rhai";
                }
                p {
                    label for="u-source" { (lang.t("或粘贴内容", "or paste its text")) }
                    textarea id="u-source" name="source" spellcheck="false" { (source) }
                }
                p {
                    label for="u-format" { (lang.t("格式", "Format")) }
                    select id="u-format" name="format" { option value="yaml" { "YAML" } option value="rhai" { "Rhai" } }
                }
                p {
                    input id="u-publish" name="publish" type="checkbox" value="1";
                    label for="u-publish" { (lang.t("无错误时发布为新版本", "Publish as a new version when it has no errors")) }
                }
                button type="submit" id="u-submit" { (lang.t("校验", "Validate")) }
            }
        }
    }
}

pub(crate) async fn list(
    State(s): State<AppState>,
    mut staff: Staff,
) -> Result<Response, Response> {
    staff.require(&s, Module::Catalog, "pathway.list").await?;
    let lang = staff.lang;
    let programs = s.programs();
    let mut by_id: BTreeMap<&str, Vec<&Pathway>> = BTreeMap::new();
    for p in programs.by_key.values() {
        by_id
            .entry(p.pathway.id.as_str())
            .or_default()
            .push(&p.pathway);
    }
    let can_upload = allowed(&staff.caller().roles, Module::Pathways);
    let body = html! {
        h1 { (lang.t("临床路径", "Pathways")) }
        div class="table-wrap" { table id="pathway-list" {
            thead { tr {
                th scope="col" { (lang.t("路径", "Pathway")) }
                th scope="col" { (lang.t("版本", "Versions")) }
                th scope="col" { (lang.t("负责角色", "Owner role")) }
                th scope="col" { (lang.t("状态数", "States")) }
            } }
            tbody {
                @for (id, versions) in &by_id {
                    @let latest = versions.iter().max_by_key(|p| p.version);
                    tr data-testid="pathway-row" data-pathway=(id) {
                        th scope="row" { @if let Some(p) = latest { (lang.text(&p.title)) } br; span class="muted" { (id) } }
                        td { @for p in versions { a href=(format!("/app/pathways/{}/{}", url_encode(id), p.version)) { "v" (p.version) } " " } }
                        td { @if let Some(p) = latest { (p.owner_role) } }
                        td { @if let Some(p) = latest { (p.states.len()) } }
                    }
                }
            }
        } }
        @if can_upload { (upload_form(lang, &staff, "")) }
    };
    Ok(page(
        lang,
        Some(&staff),
        lang.t("路径", "Pathways"),
        "pathways",
        body,
    ))
}

/// A version's state graph: states in columns by their distance from an entry point, each
/// transition an arrow labelled with its trigger.
pub(crate) fn graph_svg(p: &Pathway, lang: Lang) -> String {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    let mut queue: VecDeque<&str> = VecDeque::new();
    for e in &p.entry_points {
        if depth.insert(e.state.as_str(), 0).is_none() {
            queue.push_back(e.state.as_str());
        }
    }
    while let Some(s) = queue.pop_front() {
        let d = depth[s];
        if let Some(st) = p.states.iter().find(|x| x.id == s) {
            for t in &st.transitions {
                if !depth.contains_key(t.to.as_str()) {
                    depth.insert(t.to.as_str(), d + 1);
                    queue.push_back(t.to.as_str());
                }
            }
        }
    }
    let max_depth = depth.values().copied().max().unwrap_or(0);
    let mut columns: Vec<Vec<&str>> = vec![Vec::new(); max_depth + 2];
    for st in &p.states {
        let d = depth.get(st.id.as_str()).copied().unwrap_or(max_depth + 1);
        columns[d].push(st.id.as_str());
    }
    let (bw, bh, gx, gy) = (150.0, 40.0, 70.0, 26.0);
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (c, col) in columns.iter().enumerate() {
        for (r, s) in col.iter().enumerate() {
            pos.insert(
                s,
                (20.0 + c as f64 * (bw + gx), 20.0 + r as f64 * (bh + gy)),
            );
        }
    }
    let rows = columns.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let w = 40.0 + columns.len() as f64 * (bw + gx);
    let h = 40.0 + rows as f64 * (bh + gy);
    let title = lang.text(&p.title);
    let mut b = String::new();
    let _ = write!(
        b,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#374151"/></marker></defs>"##,
        t = escape(&title)
    );
    for st in &p.states {
        let Some(&(x1, y1)) = pos.get(st.id.as_str()) else {
            continue;
        };
        for t in &st.transitions {
            let Some(&(x2, y2)) = pos.get(t.to.as_str()) else {
                continue;
            };
            let (sx, sy, ex, ey) = (x1 + bw, y1 + bh / 2.0, x2, y2 + bh / 2.0);
            let label = match &t.trigger {
                Trigger::Immediate => String::new(),
                Trigger::Event(e) => e.clone(),
                other => serde_json::to_string(other)
                    .unwrap_or_default()
                    .trim_matches('"')
                    .chars()
                    .take(24)
                    .collect(),
            };
            let _ = write!(
                b,
                r##"<path d="M{sx:.0},{sy:.0} C{c1:.0},{sy:.0} {c2:.0},{ey:.0} {ex:.0},{ey:.0}" fill="none" stroke="#374151" marker-end="url(#arrow)"><title>{f} → {to}: {l}</title></path>"##,
                c1 = sx + 35.0,
                c2 = ex - 35.0,
                f = escape(&st.id),
                to = escape(&t.to),
                l = escape(&label)
            );
        }
    }
    for st in &p.states {
        let Some(&(x, y)) = pos.get(st.id.as_str()) else {
            continue;
        };
        let name = st
            .title
            .as_ref()
            .map(|t| lang.text(t))
            .unwrap_or_else(|| st.id.clone());
        let short: String = name.chars().take(16).collect();
        let _ = write!(
            b,
            r##"<g data-state="{id}"><rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/><text x="{tx}" y="{ty}" font-size="12" text-anchor="middle" fill="#1a1a1a">{n}</text><title>{id}</title></g>"##,
            id = escape(&st.id),
            fill = st.phase.colour(),
            stroke = if st.terminal { "#111827" } else { "#6b7280" },
            sw = if st.terminal { 2.5 } else { 1.0 },
            tx = x + bw / 2.0,
            ty = y + bh / 2.0 + 4.0,
            n = escape(&short)
        );
    }
    b.push_str("</svg>");
    b
}

pub(crate) async fn graph(
    State(s): State<AppState>,
    Path((id, version)): Path<(String, u32)>,
    mut staff: Staff,
) -> Result<Response, Response> {
    staff.require(&s, Module::Catalog, "pathway.graph").await?;
    let lang = staff.lang;
    let programs = s.programs();
    let Some(prog) = programs.get(&id, version) else {
        return Err(layout::error_page(
            lang,
            Some(&staff),
            ApiError::NotFound(format!("pathway {id} v{version}")),
        ));
    };
    let p = &prog.pathway;
    let body = html! {
        h1 { (lang.text(&p.title)) " v" (p.version) }
        p class="muted" { (p.id) " · " (lang.t("负责角色", "owner role")) " " (p.owner_role) " · " (p.states.len()) " " (lang.t("个状态", "states")) }
        figure class="chart" id="pathway-graph" { (PreEscaped(graph_svg(p, lang))) figcaption class="muted" { (lang.t("状态按距入口的步数分列；粗框为终止状态。", "States in columns by their distance from an entry point; terminal states have a heavy border.")) } }
        h2 { (lang.t("状态", "States")) }
        ul {
            @for st in &p.states {
                li { strong { (st.id) } @if let Some(t) = &st.title { " · " (lang.text(t)) }
                    @for t in &st.transitions { br; span class="muted" { "→ " (t.to) } } }
            }
        }
        p { a href="/app/pathways" { (lang.t("返回路径列表", "Back to the pathways")) } }
    };
    Ok(page(
        lang,
        Some(&staff),
        &lang.text(&p.title),
        "pathway",
        body,
    ))
}

fn diagnostics(lang: Lang, d: &[Diagnostic]) -> Markup {
    html! {
        div class="table-wrap" { table id="diagnostics" {
            caption { (lang.t("诊断", "Diagnostics")) }
            thead { tr {
                th scope="col" { (lang.t("级别", "Severity")) }
                th scope="col" { (lang.t("代码", "Code")) }
                th scope="col" { (lang.t("文件", "File")) }
                th scope="col" { (lang.t("行", "Line")) }
                th scope="col" { (lang.t("列", "Column")) }
                th scope="col" { (lang.t("问题", "Problem")) }
                th scope="col" { (lang.t("建议", "Hint")) }
            } }
            tbody {
                @for x in d {
                    tr data-testid="diagnostic" data-line=(x.pos.line) data-col=(x.pos.col) data-code=(x.code.as_str()) {
                        td { @if x.is_error() { span class="overdue" { (lang.t("错误", "error")) } } @else { (lang.t("警告", "warning")) } }
                        td class="diag" { (x.code.as_str()) }
                        td class="diag" { (x.file) }
                        td class="diag" data-testid="diag-line" { (x.pos.line) }
                        td class="diag" data-testid="diag-col" { (x.pos.col) }
                        td { (x.message) }
                        td { (x.hint) }
                    }
                }
            }
        } }
    }
}

/// The validation form's post: compiled as `POST /pathways` compiles, diagnostics shown, and
/// published when asked and clean.
pub(crate) async fn validate(
    State(s): State<AppState>,
    mut staff: Staff,
    mut form: Multipart,
) -> Result<Response, Response> {
    let lang = staff.lang;
    let bad =
        |staff: &Staff, m: String| layout::error_page(lang, Some(staff), ApiError::BadRequest(m));
    let (mut csrf, mut format, mut source, mut file_name, mut publish) = (
        String::new(),
        "yaml".to_string(),
        String::new(),
        None,
        false,
    );
    let mut file_text = String::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(bad(&staff, e.body_text())),
        };
        let name = field.name().unwrap_or("").to_string();
        let uploaded = field.file_name().map(str::to_string);
        let bytes = match field.bytes().await {
            Ok(b) if b.len() <= MAX_UPLOAD => b,
            Ok(_) => return Err(bad(&staff, "the file is larger than 512 KiB".into())),
            Err(e) => return Err(bad(&staff, e.body_text())),
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match name.as_str() {
            "csrf" => csrf = text,
            "format" => format = text,
            "source" => source = text,
            "publish" => publish = text == "1",
            "file" => {
                file_name = uploaded.filter(|n| !n.is_empty());
                file_text = text;
            }
            _ => {}
        }
    }
    staff.check_csrf(&s, &csrf).await?;
    staff
        .require(&s, Module::Pathways, "pathway.validate")
        .await?;
    if file_name.as_deref().is_some_and(|n| n.ends_with(".rhai")) {
        format = "rhai".into();
    }
    let (text, name) = if file_text.trim().is_empty() {
        (source, None)
    } else {
        (file_text, file_name)
    };
    if text.trim().is_empty() {
        return Err(bad(
            &staff,
            lang.t("请选择文件或粘贴内容。", "Choose a file or paste its text.")
                .into(),
        ));
    }
    let file = upload_name(&format, name.as_deref())
        .map_err(|e| layout::error_page(lang, Some(&staff), e))?;
    let compiled = compile(&s, file.clone(), text.clone())
        .await
        .map_err(|e| layout::error_page(lang, Some(&staff), e))?;
    let (status, result) = match compiled {
        Compiled::Diagnostics(d) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            html! {
                p class="error" role="alert" data-testid="validation-result" data-ok="false" {
                    (lang.t("文件有错误，未发布：", "The file has errors and was not published: ")) (file)
                }
                (diagnostics(lang, &d))
            },
        ),
        Compiled::Upload(upload) => {
            let warnings = upload.3.clone();
            let (id, version) = (upload.1.clone(), upload.2);
            let published = if publish {
                Some(
                    publish_upload(&s, upload, staff.call.now)
                        .await
                        .map_err(|e| layout::error_page(lang, Some(&staff), e))?,
                )
            } else {
                None
            };
            (
                if published.is_some() {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                html! {
                    p class="note" role="status" data-testid="validation-result" data-ok="true" {
                        (lang.t("文件无错误：", "The file has no errors: ")) (id) " v" (version)
                        @if published.is_some() { " · " (lang.t("已发布", "published")) }
                    }
                    @if !warnings.is_empty() { (diagnostics(lang, &warnings)) }
                },
            )
        }
    };
    // Configuration, not patient data: audited here as the API's audit layer audits an upload.
    let action = if status == StatusCode::CREATED {
        "pathway.publish"
    } else {
        "pathway.validate"
    };
    let outcome = if status == StatusCode::UNPROCESSABLE_ENTITY {
        "invalid"
    } else {
        "ok"
    };
    let c = &staff.call;
    s.audit
        .append(AuditEntry::new(
            &c.caller.staff_id,
            Some(&c.caller.institution_id),
            action,
            &format!("pathways/{file}"),
            &[],
            outcome,
            &c.remote,
            c.now,
        ))
        .await
        .map_err(|e| layout::error_page(lang, Some(&staff), e.into()))?;
    let body = html! {
        h1 { (lang.t("校验结果", "Validation")) }
        (result)
        (upload_form(lang, &staff, &text))
        p { a href="/app/pathways" { (lang.t("返回路径列表", "Back to the pathways")) } }
    };
    let mut res = page(
        lang,
        Some(&staff),
        lang.t("校验结果", "Validation"),
        "validation",
        body,
    );
    *res.status_mut() = status;
    Ok(res)
}

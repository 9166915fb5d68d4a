//! Published pathways: the catalogue, a version's state graph, and publishing an uploaded one.
//! Uploads are compiled off the async workers, a few at a time and under a deadline.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use carepath_engine::Programs;
use carepath_engine::store;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Body, Params};
use crate::{ApiError, AppState, Call};

/// A published pathway version as the catalogue lists it.
#[derive(Serialize)]
pub(crate) struct PathwaySummary {
    id: String,
    version: u32,
    title: carepath_dsl::Text,
    owner_role: String,
    entry_points: Vec<String>,
    states: usize,
}

#[derive(Serialize)]
pub(crate) struct Catalogue {
    pathways: Vec<PathwaySummary>,
}

pub(crate) async fn list(State(s): State<AppState>, _call: Call) -> Json<Catalogue> {
    let mut pathways: Vec<PathwaySummary> = s
        .programs()
        .by_key
        .values()
        .map(|p| {
            let pw = &p.pathway;
            PathwaySummary {
                id: pw.id.clone(),
                version: pw.version,
                title: pw.title.clone(),
                owner_role: pw.owner_role.clone(),
                entry_points: pw.entry_points.iter().map(|e| e.id.clone()).collect(),
                states: pw.states.len(),
            }
        })
        .collect();
    pathways.sort_by(|a, b| (&a.id, a.version).cmp(&(&b.id, b.version)));
    Json(Catalogue { pathways })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody {
    #[serde(default = "yaml")]
    format: String,
    source: String,
}

fn yaml() -> String {
    "yaml".into()
}

/// A published version and the compiler's warnings.
#[derive(Serialize)]
pub(crate) struct Published {
    id: String,
    version: u32,
    warnings: Vec<carepath_dsl::Diagnostic>,
}

pub(crate) async fn publish(
    State(s): State<AppState>,
    call: Call,
    Body(body): Body<PublishBody>,
) -> Result<Response, ApiError> {
    let file = upload_name(&body.format, None)?;
    let upload = match compile(&s, file, body.source).await {
        Err(ApiError::Unavailable(m)) => {
            let mut res = ApiError::Unavailable(m).into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return Ok(res);
        }
        Err(e) => return Err(e),
        Ok(Compiled::Diagnostics(diagnostics)) => return Ok(unprocessable(&diagnostics)),
        Ok(Compiled::Upload(upload)) => upload,
    };
    let (id, version, warnings) = publish_upload(&s, upload, call.now).await?;
    Ok((
        StatusCode::CREATED,
        Json(Published {
            id,
            version,
            warnings,
        }),
    )
        .into_response())
}

/// The file name an upload is compiled (and its diagnostics located) under: `name` when it is a
/// plain file name of the format, else `upload.yaml` or `upload.rhai`.
pub(crate) fn upload_name(format: &str, name: Option<&str>) -> Result<String, ApiError> {
    let ext = match format {
        "yaml" => ".yaml",
        "rhai" => ".rhai",
        other => {
            return Err(ApiError::BadRequest(format!(
                "format must be `yaml` or `rhai`, not `{other}`"
            )));
        }
    };
    Ok(match name {
        Some(n)
            if (n.ends_with(ext) || (ext == ".yaml" && n.ends_with(".yml")))
                && n.len() <= 100
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !n.starts_with('.') =>
        {
            n.to_string()
        }
        _ => format!("upload{ext}"),
    })
}

/// What compiling an upload gave.
pub(crate) enum Compiled {
    /// It compiles: the program, with its warnings.
    Upload(Upload),
    /// It has errors (or took too long).
    Diagnostics(Vec<carepath_dsl::Diagnostic>),
}

/// Compiles an uploaded pathway off the async workers, a few at a time and under the deadline
/// of [`crate::Uploads`]: what `POST /pathways` and the workstation's validation form both run.
/// `Unavailable` when every compilation slot is busy.
pub(crate) async fn compile(
    s: &AppState,
    file: String,
    source: String,
) -> Result<Compiled, ApiError> {
    let Ok(permit) = s.uploads.slots.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable(
            "too many pathway uploads are being compiled right now; try again in a few seconds"
                .into(),
        ));
    };
    let limit = s.uploads.limit;
    let root = s.uploads.root.clone();
    let name = file.clone();
    // Compiling runs user-supplied scripts and reads fragment files: off the async workers, under
    // a deadline the script itself checks, holding its permit until it has really finished.
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        compile_upload(&name, source, &root, limit)
    });
    match tokio::time::timeout(limit + Duration::from_secs(1), task).await {
        Ok(Ok(Ok(upload))) => Ok(Compiled::Upload(upload)),
        Ok(Ok(Err(Refused::Diagnostics(d)))) => Ok(Compiled::Diagnostics(d)),
        Ok(Ok(Err(Refused::Invalid(e)))) => Err(ApiError::BadRequest(e)),
        Ok(Err(e)) => Err(ApiError::Internal(format!("pathway compilation: {e}"))),
        Err(_) => Ok(Compiled::Diagnostics(vec![carepath_dsl::too_long(
            &file,
            carepath_dsl::Pos::START,
            limit,
        )])),
    }
}

/// Publishes a compiled upload and reloads the programs every request reads; returns its id,
/// version and warnings.
pub(crate) async fn publish_upload(
    s: &AppState,
    upload: Upload,
    now: jiff::Timestamp,
) -> Result<(String, u32, Vec<carepath_dsl::Diagnostic>), ApiError> {
    let (one, id, version, diagnostics) = upload;
    store::publish(&s.pool, &one, now).await?;
    let fresh = store::load_programs(&s.pool).await?;
    if let Ok(mut p) = s.programs.write() {
        *p = fresh;
    }
    Ok((id, version, diagnostics))
}

/// A compiled upload: the one program, its id and version, and its warnings.
pub(crate) type Upload = (Programs, String, u32, Vec<carepath_dsl::Diagnostic>);

/// Compiles an uploaded pathway into a program of its own, or returns its diagnostics. Blocking:
/// call it off the async workers. Fragments are read only from inside `root`.
fn compile_upload(
    file: &str,
    source: String,
    root: &std::path::Path,
    limit: Duration,
) -> Result<Upload, Refused> {
    let deadline = std::time::Instant::now() + limit;
    let loader = carepath_dsl::RootedLoader::new(root);
    let compiled = if file.ends_with(".rhai") {
        carepath_dsl::compile_rhai_until(file, source.as_bytes(), root, &loader, deadline)
    } else {
        carepath_dsl::compile_yaml(file, source.as_bytes(), root, &loader)
    };
    let diagnostics = compiled.diagnostics.clone();
    let pathway = carepath_engine::program::into_pathway(compiled)
        .map_err(|_| Refused::Diagnostics(diagnostics.clone()))?;
    let mut one = Programs::default();
    let src = carepath_engine::program::Source::new(file, source, &pathway);
    let (id, version) = (pathway.id.clone(), pathway.version);
    one.insert(pathway, src)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    Ok((one, id, version, diagnostics))
}

/// Why an upload is not published.
enum Refused {
    /// It has errors (or took too long): 422 with its diagnostics.
    Diagnostics(Vec<carepath_dsl::Diagnostic>),
    /// Its expressions do not compile for the engine: 400.
    Invalid(String),
}

/// The 422 answer of a pathway with errors: the first message as the detail, and every diagnostic
/// located in its file.
pub(crate) fn unprocessable(diagnostics: &[carepath_dsl::Diagnostic]) -> Response {
    let detail = diagnostics
        .iter()
        .find(|d| d.is_error())
        .map(|d| d.message.clone())
        .unwrap_or_else(|| "the pathway does not compile".into());
    let mut res = (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"type": "about:blank", "title": "The pathway has errors", "status": 422, "detail": detail, "diagnostics": diagnostics})),
    )
        .into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    res
}

#[derive(Deserialize)]
pub(crate) struct GraphQuery {
    format: Option<String>,
}

pub(crate) async fn graph(
    State(s): State<AppState>,
    Path((id, version)): Path<(String, u32)>,
    _call: Call,
    Params(q): Params<GraphQuery>,
) -> Result<Response, ApiError> {
    let programs = s.programs();
    let prog = programs
        .get(&id, version)
        .ok_or_else(|| ApiError::NotFound(format!("pathway {id} v{version}")))?;
    let (text, ctype) = match q.format.as_deref().unwrap_or("dot") {
        "dot" => (
            carepath_dsl::graph::to_dot(&prog.pathway),
            "text/vnd.graphviz",
        ),
        "mermaid" => (carepath_dsl::graph::to_mermaid(&prog.pathway), "text/plain"),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format must be `dot` or `mermaid`, not `{other}`"
            )));
        }
    };
    Ok(([(header::CONTENT_TYPE, ctype)], text).into_response())
}

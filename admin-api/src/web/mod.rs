//! The case manager's workstation: server-rendered pages under `/app/`, served by the same binary
//! and the same router as the JSON API.
//!
//! Pages are HTML written by `maud` (compile-time templates, every value escaped), with one small
//! stylesheet and a vendored htmx served from the binary; every action is a plain form that works
//! without script, htmx only refreshes the board. A page authenticates by session cookie
//! (`session.rs`) and then does what the JSON handler of the same action does, through the same
//! [`crate::Call`], permission table and store functions, so scoping, permissions and audit have
//! one implementation. Files: `session` (sign-in, sessions, CSRF, TOTP), `layout` (page shell,
//! languages, errors, static files), `board`, `patient`, `referrals`, `indicators`, `pathways`.

mod audit;
mod board;
mod indicators;
mod layout;
mod pathways;
mod patient;
mod referrals;
pub(crate) mod session;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use crate::AppState;

pub use session::{
    TOTP_ROLES, WebConfig, base32, hash_password, new_totp_secret, totp_at, verify_password,
};

/// The workstation's routes, merged into the API's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/app", get(|| async { Redirect::to("/app/") }))
        .route("/app/", get(layout::home))
        .route("/app/login", get(session::login_page).post(session::login))
        .route("/app/logout", post(session::logout))
        .route("/app/lang", get(layout::switch_lang))
        .route("/app/static/htmx.min.js", get(layout::htmx))
        .route("/app/static/app.css", get(layout::css))
        // Browsers ask for it at the root of the origin on their own.
        .route("/favicon.ico", get(layout::favicon))
        .route("/app/board", get(board::board))
        .route("/app/board/rows", get(board::board_rows))
        .route("/app/tasks/{id}/{action}", post(board::act))
        .route("/app/patients/{id}", get(patient::view))
        .route("/app/alarms/{id}/{action}", post(patient::alarm_act))
        .route("/app/referrals", get(referrals::inbox))
        .route("/app/referrals/{id}/{decision}", post(referrals::decide))
        .route("/app/indicators", get(indicators::table))
        .route(
            "/app/indicators/{name}/patients",
            get(indicators::drill_down),
        )
        .route("/app/pathways", get(pathways::list))
        .route("/app/audit", get(audit::view))
        .route("/app/pathways/validate", post(pathways::validate))
        .route("/app/pathways/{id}/{version}", get(pathways::graph))
}

//! End-to-end tests: one binary (root `autotests = false`), one module per area.
//!
//! PostgreSQL runs when `DATABASE_URL` points at a server (each test gets its own fresh database);
//! without it the PostgreSQL half is skipped with a loud message, never silently.

mod support;

mod alarms;
mod api;
mod api_queue;
mod audit;
mod bench;
mod browser;
mod catch_up;
mod crate_graph;
mod delivery;
mod demo;
mod engine_exactly_once;
mod engine_store;
mod escalation;
mod events_during_pass;
mod fhir;
mod goals;
mod hl7;
mod hospital;
mod import;
mod intake;
mod outcome_rule;
mod outcome_three_ways;
mod ownership;
mod pathway_test_replay;
mod pathway_upload;
mod release;
mod report;
mod scale_answers;
mod scenarios;
mod security;
mod sim_kpis;
mod tidy;
mod web;
mod working_days;

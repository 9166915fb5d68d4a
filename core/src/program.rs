//! Loading pathways into runnable programs, one per (pathway, version).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use carepath_dsl::{Compiled, DocKind, Pathway};
use sha2::{Digest, Sha256};

use crate::sandbox::{self, CompiledExprs};
use crate::step::Program;

/// A pathway version's source, as published.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: String,
    pub format: &'static str,
    pub text: String,
    /// The compiled model as JSON, fragments included: what actually runs.
    pub model: String,
    /// SHA-256 of `model`: a published version is immutable.
    pub hash: String,
}

impl Source {
    pub fn new(file: &str, text: String, pathway: &Pathway) -> Source {
        let format = if file.ends_with(".rhai") {
            "rhai"
        } else {
            "yaml"
        };
        let model = serde_json::to_string(pathway).unwrap_or_default();
        let hash = hex::encode(Sha256::digest(model.as_bytes()));
        Source {
            file: file.to_string(),
            format,
            text,
            model,
            hash,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: the pathway has errors:\n{diagnostics}")]
    Invalid { file: String, diagnostics: String },
    #[error("{0}")]
    Io(String),
    #[error("pathway {pathway} v{version}: {message}")]
    Compile {
        pathway: String,
        version: u32,
        message: String,
    },
}

/// Every runnable program, keyed by pathway id and version.
#[derive(Default, Clone)]
pub struct Programs {
    pub by_key: HashMap<(String, u32), Arc<Program>>,
    pub sources: HashMap<(String, u32), Source>,
}

impl Programs {
    pub fn get(&self, id: &str, version: u32) -> Option<&Arc<Program>> {
        self.by_key.get(&(id.to_string(), version))
    }

    /// The newest version of each pathway.
    pub fn latest(&self) -> Vec<Arc<Program>> {
        let mut newest: HashMap<&str, &Arc<Program>> = HashMap::new();
        for ((id, v), p) in &self.by_key {
            if newest
                .get(id.as_str())
                .is_none_or(|q| q.pathway.version < *v)
            {
                newest.insert(id, p);
            }
        }
        let mut out: Vec<Arc<Program>> = newest.into_values().cloned().collect();
        out.sort_by(|a, b| a.pathway.id.cmp(&b.pathway.id));
        out
    }

    /// The task boards (roles) staff holding `roles` may read and act on: their own roles, and
    /// the roles whose tasks some published pathway escalates to one of them (a head nurse
    /// supervises the ward nurses' board when a pathway escalates their tasks to her).
    pub fn boards_for(&self, roles: &[String]) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = roles.iter().cloned().collect();
        for prog in self.by_key.values() {
            for t in prog.pathway.task_specs() {
                if let Some(sla) = &t.sla
                    && sla.escalate_to.as_ref().is_some_and(|r| roles.contains(r))
                {
                    out.insert(t.role.clone());
                }
            }
        }
        out
    }

    pub fn insert(&mut self, pathway: Pathway, source: Source) -> Result<Arc<Program>, LoadError> {
        let engine = Arc::new(sandbox::engine());
        let exprs = CompiledExprs::compile(engine, &pathway).map_err(|e| LoadError::Compile {
            pathway: pathway.id.clone(),
            version: pathway.version,
            message: e.to_string(),
        })?;
        let key = (pathway.id.clone(), pathway.version);
        let prog = Arc::new(Program { pathway, exprs });
        self.by_key.insert(key.clone(), prog.clone());
        self.sources.insert(key, source);
        Ok(prog)
    }

    /// Compiles every pathway under `dir` (fragments, scales and tests are skipped); any error fails.
    pub fn load_dir(dir: &Path) -> Result<Programs, LoadError> {
        let files = carepath_dsl::pathway_files(&[dir.to_path_buf()])
            .map_err(|e| LoadError::Io(format!("{}: {e}", dir.display())))?;
        let mut programs = Programs::default();
        for file in files {
            if file.components().any(|c| c.as_os_str() == "twins") {
                continue;
            }
            let compiled = carepath_dsl::compile_file(&file);
            if compiled.kind != DocKind::Pathway {
                continue;
            }
            let text = std::fs::read_to_string(&file)
                .map_err(|e| LoadError::Io(format!("{}: {e}", file.display())))?;
            let pathway = into_pathway(compiled)?;
            let source = Source::new(&file.display().to_string(), text, &pathway);
            programs.insert(pathway, source)?;
        }
        Ok(programs)
    }
}

pub fn into_pathway(compiled: Compiled) -> Result<Pathway, LoadError> {
    let file = compiled.file.clone();
    compiled.into_pathway().map_err(|diags| LoadError::Invalid {
        file,
        diagnostics: diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

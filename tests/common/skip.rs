//! Tests that lack a component show as ignored, never as passed: the test binaries that use
//! this are `libtest-mimic` harnesses (`harness = false` in Cargo.toml), and a test that
//! returns a [`Skip`] error is reported ignored, with the reason, in the runner's summary.
#![allow(dead_code)]

use libtest_mimic::{Completion, Failed, Trial};

/// Why a test could not run (all or part of it): a component it needs is missing.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// The error a test returns when a component it needs is missing: see [`Skip`].
pub fn skip(reason: impl Into<String>) -> anyhow::Error {
    Skip(reason.into()).into()
}

/// The trial `name`: `test`, ignored with the reason when it returns a [`Skip`] error, failed
/// with the whole chain on any other error.
pub fn trial(name: &str, test: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> Trial {
    Trial::ignorable_test(name, move || match test() {
        Ok(()) => Ok(Completion::Completed),
        Err(e) => match e.downcast_ref::<Skip>() {
            Some(Skip(reason)) => Ok(Completion::ignored_with(reason.clone())),
            None => Err(Failed::from(format!("{e:?}"))),
        },
    })
}

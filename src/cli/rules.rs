//! `hark rules check|test`. The implementation lives in the library
//! ([`crate::rules::cli`]) so that it can be tested without the binary.

pub use crate::rules::cli::{
    check_command, run, test_command, CheckArgs, RulesArgs, RulesCommand, TestArgs,
};

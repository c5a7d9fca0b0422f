//! `keygate export`: a key service's whole table as a plugin configuration.

use crate::cli::connection::Connection;
use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    conn: Connection,
}

pub fn run(a: &ExportArgs) -> Result<ExitCode, String> {
    let answer = a.conn.call("GET", "/v1/export", None)?;
    print!("{}", answer.text);
    Ok(ExitCode::SUCCESS)
}

//! `keygate serve`: runs the key service (`crate::serve`) with these options.

use crate::serve::{self, Settings};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ServeArgs {
    /// The database: sqlite:PATH (the file is created if missing) or
    /// postgres://USER@HOST:PORT/DB (replicas may share one).
    #[arg(long, value_name = "URL", default_value = "sqlite:keygate.db")]
    db: String,
    /// Where the admin API listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    admin_listen: SocketAddr,
    /// Where the filter's protocol (/v1/filter/...) listens; no authentication.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9101")]
    filter_listen: SocketAddr,
    /// After every change, write the whole table here as an Envoy ECDS file.
    #[arg(long, value_name = "PATH")]
    ecds_file: Option<PathBuf>,
    /// The plugin configuration (JSON, without keys) the ECDS file carries beside the keys.
    #[arg(long, value_name = "FILE", requires = "ecds_file")]
    ecds_base: Option<PathBuf>,
    /// The .wasm path the ECDS file tells Envoy to load.
    #[arg(long, value_name = "PATH", default_value = "dist/keygate.wasm")]
    ecds_wasm: String,
    /// At start, add the keys of this plugin configuration (JSON, with sha256 digests) whose
    /// ids the database does not hold yet: a static table moved into the service.
    #[arg(long, value_name = "FILE")]
    import: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    serve::run(Settings {
        db: args.db,
        admin_listen: args.admin_listen,
        filter_listen: args.filter_listen,
        ecds_file: args.ecds_file,
        ecds_base: args.ecds_base,
        ecds_wasm: args.ecds_wasm,
        import: args.import,
    })
}

//! The options every command that talks to a key service takes, and the one way such a
//! command calls it. The admin token comes from `KEYGATE_ADMIN_TOKEN` or standard input,
//! never argv (which every user of the machine can read).

use crate::client::{Answer, Client};
use clap::Args;
use serde_json::Value;
use std::io::Read as _;

#[derive(Args)]
pub struct Connection {
    /// The key service's admin API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9100")]
    pub server: String,
    /// Read the admin token from standard input (else from KEYGATE_ADMIN_TOKEN).
    #[arg(long)]
    pub token_stdin: bool,
    /// Print the admin API's own JSON response.
    #[arg(long)]
    pub json: bool,
    /// A certificate authority (PEM) to trust for an https:// server, beside the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
}

impl Connection {
    /// One admin API call; a non-2xx answer is an error naming the API's message and path
    /// (with `--json`, the API's own answer is printed first).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Answer, String> {
        let client = Client::new(&self.server, self.token()?, self.ca.as_deref())?;
        client.call(method, path, body).map_err(|failure| {
            if self.json && !failure.text.is_empty() {
                println!("{}", failure.text.trim_end());
            }
            failure.message
        })
    }

    fn token(&self) -> Result<String, String> {
        let token = if self.token_stdin {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("standard input: {e}"))?;
            input.trim_end_matches(['\n', '\r']).to_string()
        } else {
            std::env::var("KEYGATE_ADMIN_TOKEN").unwrap_or_default()
        };
        if token.is_empty() {
            return Err("no admin token: set KEYGATE_ADMIN_TOKEN or pass --token-stdin".into());
        }
        Ok(token)
    }
}

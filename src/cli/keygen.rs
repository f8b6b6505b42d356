//! `hark keygen`: write a key pair that Laniakea's lk-keytool can read, and vice versa.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::event::keys::{encode_base64, write_keypair, KeyMetadata, SigningKey};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes DIR/ID.key (public: copy it into the trusted keys directory of every \
relay and daemon that should accept this signer) and DIR/ID.key_secret (mode 0600: keep it on the \
publishing host). Existing files are never overwritten."
)]
pub struct KeygenArgs {
    /// Signer name, written as `metadata.id`; it is how rules and grants refer to this key.
    #[arg(long)]
    id: String,
    /// Directory to write the two files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Human-readable owner name (metadata only).
    #[arg(long)]
    name: Option<String>,
    /// Contact e-mail (metadata only).
    #[arg(long)]
    email: Option<String>,
}

pub fn run(args: KeygenArgs) -> ExitCode {
    if args.id.is_empty() || args.id.contains(['/', '"', '\n', ' ']) {
        return super::fail(
            format!(
                "--id {:?} must be a non-empty name without '/', quotes or spaces",
                args.id
            ),
            super::EXIT_USAGE,
        );
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        return super::fail(format!("cannot create {}: {e}", args.out.display()), 1);
    }
    let key = SigningKey::generate(&args.id);
    let meta = KeyMetadata {
        id: args.id.clone(),
        name: args.name,
        email: args.email,
    };
    match write_keypair(&args.out, &meta, &key) {
        Ok((public, secret)) => {
            println!("public key:  {}", public.display());
            println!("secret key:  {}", secret.display());
            println!(
                "verify key:  {}",
                encode_base64(key.key.verifying_key().as_bytes())
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e, 1),
    }
}

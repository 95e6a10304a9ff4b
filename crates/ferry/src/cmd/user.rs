//! `ferry user add|passwd|del|list`: user management against the data root (no server
//! needed; a running server picks the changes up at the next login).
//!
//! Passwords come from a prompt (asked twice) or, with `--password-stdin`, from the first
//! line of standard input — never from the command line.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ferry_server::DataRoot;
use ferry_server::quota::{format_size, parse_size};
use ferry_server::users;

#[derive(Debug, clap::Args)]
pub struct RootArg {
    /// Data root of the server.
    #[arg(long, env = "FERRY_ROOT", default_value = "ferry-data")]
    pub root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PasswordArg {
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add a user with an empty home.
    Add {
        name: String,
        /// Storage quota: 1024, 500MB, 10GiB, unlimited.
        #[arg(long, default_value = "10GiB", value_parser = parse_size)]
        quota: u64,
        /// Most files the user may hold.
        #[arg(long, default_value_t = 100_000)]
        max_files: u64,
        #[command(flatten)]
        password: PasswordArg,
        #[command(flatten)]
        root: RootArg,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArg,
        #[command(flatten)]
        root: RootArg,
    },
    /// Remove a user (the home stays unless --purge).
    Del {
        name: String,
        /// Also delete the user's home, partial uploads and hash records.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        root: RootArg,
    },
    /// List users with their quota and usage.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        root: RootArg,
    },
}

fn read_password(name: &str, arg: &PasswordArg) -> anyhow::Result<String> {
    if arg.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let pw = line.trim_end_matches(['\n', '\r']).to_owned();
        if pw.is_empty() {
            bail!("empty password on stdin");
        }
        return Ok(pw);
    }
    let pw = rpassword::prompt_password(format!("password for {name}: "))
        .context("cannot prompt for a password (use --password-stdin without a terminal)")?;
    let again = rpassword::prompt_password("again: ")?;
    if pw != again {
        bail!("the passwords do not match");
    }
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

fn open_root(root: &RootArg) -> anyhow::Result<DataRoot> {
    let (r, _) = DataRoot::open_or_init(&root.root)
        .with_context(|| format!("cannot open the data root {}", root.root.display()))?;
    Ok(r)
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Add {
            name,
            quota,
            max_files,
            password,
            root,
        } => {
            users::validate_name(&name)?;
            let r = open_root(&root)?;
            let pw = read_password(&name, &password)?;
            users::add(&r, &name, &pw, quota, max_files)?;
            eprintln!(
                "added {name} (quota {}, at most {max_files} files); home: {}",
                format_size(quota),
                r.home_dir(&name).display()
            );
        }
        Command::Passwd {
            name,
            password,
            root,
        } => {
            let r = open_root(&root)?;
            if users::load(&r)?.get(&name).is_none() {
                bail!("no user {name:?}");
            }
            let pw = read_password(&name, &password)?;
            users::passwd(&r, &name, &pw)?;
            eprintln!("password of {name} changed");
        }
        Command::Del { name, purge, root } => {
            let r = open_root(&root)?;
            users::del(&r, &name, purge)?;
            if purge {
                eprintln!("deleted {name} and its home");
            } else {
                eprintln!(
                    "deleted {name}; its files stay in {}",
                    r.home_dir(&name).display()
                );
            }
        }
        Command::List { json, root } => {
            let r = open_root(&root)?;
            let list = users::list(&r)?;
            if json {
                for (u, usage) in list {
                    outln!(
                        "{}",
                        serde_json::json!({
                            "name": u.name,
                            "quota_bytes": u.quota_bytes,
                            "max_files": u.max_files,
                            "used_bytes": usage.bytes,
                            "files": usage.files,
                        })
                    );
                }
            } else {
                outln!(
                    "{:<32} {:>12} {:>12} {:>10} {:>10}",
                    "NAME",
                    "QUOTA",
                    "USED",
                    "FILES",
                    "MAX-FILES"
                );
                for (u, usage) in list {
                    outln!(
                        "{:<32} {:>12} {:>12} {:>10} {:>10}",
                        u.name,
                        format_size(u.quota_bytes),
                        format_size(usage.bytes),
                        usage.files,
                        u.max_files
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

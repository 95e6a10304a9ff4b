//! `ferry shell`: an interactive session, like sftp's prompt, with line editing and history.

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_client::{Client, GetOptions, PutOptions};
use rustyline::error::ReadlineError;

use super::crew::Crew;
use super::get::{get_paths, parse_algo};
use super::ops::{format_entry, run_ls};
use super::put::put_paths;
use super::{Output, Remote, block_on};

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

const HELP: &str = "\
commands (remote paths are relative to the remote working directory):
  ls [-l] [PATH]          list a directory
  cd PATH | pwd           change / print the remote working directory
  stat PATH [ALGO]        metadata, and the hash in ALGO (blake3, sha256, md5)
  mkdir [-p] PATH         create a directory
  rm [-r] PATH            remove a file, or a directory with -r
  mv FROM TO              move or rename
  put [-r] [-f] LOCAL...  upload into the remote working directory
  get [-r] [-f] REMOTE... download into the local working directory
  lcd PATH | lpwd | lls   local working directory
  help | quit";

pub fn shell(args: ShellArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let mut client = args.remote.connect().await?;
        let mut editor = rustyline::DefaultEditor::new()?;
        let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ferry_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let output = Output {
            json: false,
            quiet: args.quiet,
        };
        let mut last = ExitCode::SUCCESS;
        loop {
            let cwd = client.pwd().await.unwrap_or_else(|_| "?".into());
            let line = match editor.readline(&format!("ferry:{cwd}> ")) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            let words = match split_words(&line) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    continue;
                }
            };
            if words.is_empty() {
                continue;
            }
            let _ = editor.add_history_entry(line.as_str());
            match run_line(&mut client, &words, output).await {
                Ok(Flow::Quit) => break,
                Ok(Flow::Continue(code)) => {
                    last = code;
                    // A transfer reports what the failure of its connection interrupted, file
                    // by file; the next command could only fail.
                    if client.is_broken() {
                        eprintln!("ferry: the connection to the server failed; leaving the shell");
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("ferry: {e:#}");
                    last = ExitCode::FAILURE;
                    // A dead connection cannot serve the next command.
                    if e.chain().any(|c| {
                        c.downcast_ref::<ferry_client::ClientError>()
                            .is_some_and(|ce| !ce.connection_usable())
                    }) {
                        break;
                    }
                }
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        let _ = client.quit().await;
        Ok(last)
    })
}

enum Flow {
    Continue(ExitCode),
    Quit,
}

async fn run_line(client: &mut Client, words: &[String], output: Output) -> anyhow::Result<Flow> {
    let (cmd, rest) = words.split_first().expect("non-empty");
    let flags: Vec<&str> = rest
        .iter()
        .filter(|w| w.starts_with('-') && w.len() > 1)
        .map(String::as_str)
        .collect();
    let args: Vec<String> = rest
        .iter()
        .filter(|w| !(w.starts_with('-') && w.len() > 1))
        .cloned()
        .collect();
    let has = |f: &str| flags.contains(&f);
    let ok = Ok(Flow::Continue(ExitCode::SUCCESS));
    match cmd.as_str() {
        "quit" | "exit" | "bye" => Ok(Flow::Quit),
        "help" | "?" => {
            outln!("{HELP}");
            ok
        }
        "pwd" => {
            outln!("{}", client.pwd().await?);
            ok
        }
        "cd" => {
            client.cd(args.first().map_or("/", String::as_str)).await?;
            ok
        }
        "ls" | "dir" => Ok(Flow::Continue(
            run_ls(client, args.first().map(String::as_str), has("-l"), output).await?,
        )),
        "stat" => {
            let path = need(&args, 0, "stat PATH [ALGO]")?;
            let algo = args
                .get(1)
                .map(|a| parse_algo(a))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            outln!("{}", format_entry(&client.stat(path, algo).await?, true));
            ok
        }
        "mkdir" => {
            client
                .mkdir(need(&args, 0, "mkdir [-p] PATH")?, has("-p"))
                .await?;
            ok
        }
        "rm" => {
            client
                .rm(need(&args, 0, "rm [-r] PATH")?, has("-r"))
                .await?;
            ok
        }
        "mv" | "rename" => {
            let from = need(&args, 0, "mv FROM TO")?;
            let to = need(&args, 1, "mv FROM TO")?;
            client.mv(from, to, has("-f")).await?;
            ok
        }
        "put" => {
            need(&args, 0, "put [-r] [-f] LOCAL...")?;
            let locals: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
            let opts = PutOptions {
                overwrite: has("-f"),
                resume: true,
                hash_cache: Some(ferry_client::tls::default_hash_cache()),
            };
            Ok(Flow::Continue(
                put_paths(
                    client,
                    &mut Crew::none(),
                    &locals,
                    ".",
                    None,
                    has("-r"),
                    &opts,
                    output,
                )
                .await?,
            ))
        }
        "get" => {
            need(&args, 0, "get [-r] [-f] REMOTE...")?;
            let opts = GetOptions {
                resume: true,
                overwrite: has("-f"),
                algo: None,
                hash_thread_min: GetOptions::HASH_THREAD_MIN,
            };
            Ok(Flow::Continue(
                get_paths(
                    client,
                    &mut Crew::none(),
                    &args,
                    &PathBuf::from("."),
                    None,
                    has("-r"),
                    &opts,
                    output,
                )
                .await?,
            ))
        }
        "lcd" => {
            std::env::set_current_dir(need(&args, 0, "lcd PATH")?)?;
            ok
        }
        "lpwd" => {
            outln!("{}", std::env::current_dir()?.display());
            ok
        }
        "lls" => {
            let dir = args.first().map_or(".", String::as_str);
            let mut names: Vec<String> = std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .map(|e| {
                    let slash = if e.path().is_dir() { "/" } else { "" };
                    format!("{}{slash}", e.file_name().to_string_lossy())
                })
                .collect();
            names.sort();
            for n in names {
                outln!("{n}");
            }
            ok
        }
        other => anyhow::bail!("unknown command {other:?} (try help)"),
    }
}

fn need<'a>(args: &'a [String], i: usize, usage: &str) -> anyhow::Result<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| anyhow::anyhow!("usage: {usage}"))
}

/// Splits a command line into words, honouring single and double quotes and backslashes.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => {
                    cur.push(n);
                    in_word = true;
                }
                None => return Err("line ends in a backslash".into()),
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(split_words("ls -l  docs").unwrap(), ["ls", "-l", "docs"]);
        assert_eq!(
            split_words(r#"put "my file.txt" 'a b' c\ d"#).unwrap(),
            ["put", "my file.txt", "a b", "c d"]
        );
        assert_eq!(split_words(r#"get """#).unwrap(), ["get", ""]);
        assert!(split_words("put 'open").is_err());
        assert!(split_words("put x\\").is_err());
    }
}

//! How a command gets the vault's keys: the passphrase flags, reading the passphrase (file,
//! stdin, environment or a prompt with echo off), or a recovery key file instead.

use super::key::parse_recovery_key;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use coldvault::config::{self, Config};
use coldvault::crypto::{CryptoError, VaultDescriptor, VaultKeys};
use std::io::{Read, Write};
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Args, Clone)]
pub struct PassArgs {
    /// Read the passphrase from this file (first line). Otherwise COLDVAULT_PASSPHRASE, or a prompt.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Internal: the passphrase arrives on stdin (used when the daemon forks itself).
    #[arg(long, hide = true)]
    pub passphrase_stdin: bool,
    /// Use a recovery key (from `coldvault key export-recovery`) instead of the passphrase.
    #[arg(long)]
    pub recovery_key_file: Option<PathBuf>,
}

fn read_tty_line(prompt: &str) -> Result<Zeroizing<String>> {
    use std::os::fd::AsRawFd;
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| anyhow!("no passphrase given and no terminal to ask on: use --passphrase-file F or COLDVAULT_PASSPHRASE"))?;
    write!(tty, "{prompt}")?;
    tty.flush()?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is a plain C struct of integers and arrays; all-zero is a valid value.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the life of `tty`, and `old` is a valid, writable termios.
    let is_tty = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if is_tty {
        let mut new = old;
        new.c_lflag &= !libc::ECHO;
        // SAFETY: `fd` is open, `new` is a valid termios read from it with ECHO cleared.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &new) };
    }
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    if is_tty {
        // SAFETY: restores the termios read from the same open `fd` above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    writeln!(tty)?;
    r?;
    Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string()))
}

pub fn passphrase(p: &PassArgs, confirm: bool) -> Result<Zeroizing<String>> {
    let pw = if let Some(f) = &p.passphrase_file {
        let s = Zeroizing::new(std::fs::read_to_string(f).with_context(|| format!("cannot read passphrase file {}", f.display()))?);
        Zeroizing::new(s.lines().next().unwrap_or("").to_string())
    } else if p.passphrase_stdin {
        let mut s = Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut s)?;
        Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_string())
    } else if let Ok(v) = std::env::var("COLDVAULT_PASSPHRASE") {
        Zeroizing::new(v)
    } else {
        let a = read_tty_line("Vault passphrase: ")?;
        if confirm {
            let b = read_tty_line("Repeat passphrase: ")?;
            if *a != *b {
                bail!("the passphrases do not match");
            }
        }
        a
    };
    if pw.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(pw)
}

/// Keys for a command that reads the vault: a recovery key file, or the passphrase.
pub fn keys_for(cfg: &Config, pass: &PassArgs) -> Result<VaultKeys> {
    if let Some(f) = &pass.recovery_key_file {
        let k = Zeroizing::new(std::fs::read_to_string(f).with_context(|| format!("cannot read recovery key file {}", f.display()))?);
        return parse_recovery_key(&k, &cfg.vault.public_key()?);
    }
    if cfg.write_only {
        bail!("this is a write-only machine (coldvault init --write-only): it holds no private key, so it cannot decrypt; use a full machine, or --recovery-key-file");
    }
    let pw = passphrase(pass, false)?;
    unlock(&cfg.vault, &pw)
}

pub fn load_unlocked(config: Option<PathBuf>, pass: &PassArgs) -> Result<(Config, VaultKeys)> {
    let cfg = Config::load(&config.unwrap_or_else(config::default_config_path))?;
    let keys = keys_for(&cfg, pass)?;
    Ok((cfg, keys))
}

pub fn unlock(d: &VaultDescriptor, pw: &str) -> Result<VaultKeys> {
    d.unlock(pw.as_bytes()).map_err(|e| match e {
        CryptoError::WrongPassphrase => anyhow!("wrong passphrase"),
        other => anyhow!("cannot unlock the vault key: {other}"),
    })
}

/// Ask a yes/no question on the terminal; without one (a script, CI), the answer is no: what
/// needs the user's say is never done unasked.
pub fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        eprintln!("coldvault: {question} needs an answer on a terminal (or --yes)");
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

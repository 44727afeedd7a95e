//! A node's configuration: `config.toml` and the cluster key file in the data dir.
//!
//! The data dir holds everything a node owns: `config.toml` (what `init` was told),
//! `cluster.key` (mode 0600, hex), and `db/` (the sled database); the data dir and `db/`
//! are mode 0700. Nothing here talks to the network.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use raftshare_raft::key::{ClusterKey, Identity};
use raftshare_raft::NodeId;
use serde::{Deserialize, Serialize};

/// The port raftshare listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;

const CONFIG_FILE: &str = "config.toml";
const KEY_FILE: &str = "cluster.key";
/// This node's own X25519 key pair (private, 0600): rotated cluster keys are sealed to it.
const IDENTITY_FILE: &str = "identity.key";
/// Cluster keys replaced by rotations, one per line, oldest first (0600): kept so a
/// member that was away, and still holds one, can fetch its sealed new key.
const REPLACED_KEYS_FILE: &str = "replaced.keys";
const DB_DIR: &str = "db";
const SOCKET_FILE: &str = "node.sock";

/// Everything `init` decides about a node, as saved in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Random, chosen at `init`, never reused by another node.
    pub node_id: NodeId,
    /// Shown to people; defaults to the host name.
    pub name: String,
    /// Where the transport listens. Port 0 picks a free port at the first `run`, which
    /// is then saved here so peers can find the node again after a restart.
    pub listen: SocketAddr,
    /// The address peers dial (the listen address, or this machine's LAN address when
    /// listening on all interfaces).
    pub advertise: SocketAddr,
    /// The folder that is kept identical on every node.
    pub shared_dir: PathBuf,
    /// Subnets that may connect. Empty: this machine's interface subnets and loopback.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Raft timing and compaction.
    #[serde(default)]
    pub raft: RaftTuning,
}

/// Raft timing, in milliseconds, and snapshot cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many applied entries.
    pub snapshot_every: u64,
}

impl RaftTuning {
    /// Whether these timings can run a cluster: none zero, and a heartbeat well inside
    /// the election timeout's range. The error names the key and the way out.
    pub fn check(&self) -> Result<()> {
        let defaults = RaftTuning::default();
        for (key, value, default) in [
            ("heartbeat_ms", self.heartbeat_ms, defaults.heartbeat_ms),
            ("election_min_ms", self.election_min_ms, defaults.election_min_ms),
            ("election_max_ms", self.election_max_ms, defaults.election_max_ms),
            ("snapshot_every", self.snapshot_every, defaults.snapshot_every),
        ] {
            if value == 0 {
                bail!("[raft] {key} = 0 in config.toml: it must be above 0 (the default is {default})");
            }
        }
        if !(self.heartbeat_ms < self.election_min_ms && self.election_min_ms < self.election_max_ms) {
            bail!(
                "the [raft] settings in config.toml need heartbeat_ms < election_min_ms < election_max_ms (now {} < \
                 {} < {}; the defaults are {} < {} < {})",
                self.heartbeat_ms,
                self.election_min_ms,
                self.election_max_ms,
                defaults.heartbeat_ms,
                defaults.election_min_ms,
                defaults.election_max_ms
            );
        }
        Ok(())
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        // A LAN round trip is well under a millisecond: a 1-2 s election timeout keeps
        // failover quick without false elections on a busy old laptop.
        RaftTuning { heartbeat_ms: 250, election_min_ms: 1000, election_max_ms: 2000, snapshot_every: 10_000 }
    }
}

/// What `raftshare init` was given.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub shared_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    pub name: Option<String>,
    pub key: Option<String>,
    pub allow: Vec<IpNet>,
}

/// A node's data dir and what is in it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root` (it may not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// `--data-dir`, else `RAFTSHARE_DATA_DIR` (clap fills it), else the platform's data folder.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self> {
        match explicit {
            Some(dir) => Ok(DataDir::new(dir)),
            None => {
                let base = dirs::data_dir()
                    .context("cannot tell where to keep raftshare's data: pass --data-dir or set RAFTSHARE_DATA_DIR")?;
                Ok(DataDir::new(base.join("raftshare")))
            }
        }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sled database folder.
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_DIR)
    }

    /// The running node's socket for its own command line (mode 0600, in the private
    /// data dir): being able to open it is the CLI's credential.
    pub fn socket_path(&self) -> PathBuf {
        self.root.join(SOCKET_FILE)
    }

    fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    fn key_path(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }

    /// Whether `init` has run here.
    pub fn is_initialized(&self) -> bool {
        self.config_path().exists()
    }

    /// Create the node's config and key. Refuses to overwrite an existing node.
    pub fn init(&self, opts: InitOptions) -> Result<(Config, ClusterKey)> {
        if self.is_initialized() {
            bail!(
                "a raftshare node is already set up in {} (node config {}); to start over, stop it and remove that folder",
                self.root.display(),
                self.config_path().display()
            );
        }
        let key = match &opts.key {
            Some(hex) => ClusterKey::from_hex(hex.trim()).context("the --key given is not a raftshare cluster key")?,
            None => ClusterKey::generate(),
        };
        let shared_dir = absolute(&opts.shared_dir)?;
        check_shared_dir(&shared_dir, &self.root)?;
        let listen = opts.listen.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT));
        let config = Config {
            node_id: new_node_id(),
            // Trimmed, as `config --name` does.
            name: opts.name.map(|n| n.trim().to_string()).unwrap_or_else(default_name),
            listen,
            advertise: advertise_for(listen),
            shared_dir,
            allow: opts.allow,
            raft: RaftTuning::default(),
        };
        validate_name(&config.name)?;
        // Everything checked before anything is written: a failed init leaves nothing
        // behind to stand in the way of the next one.
        toml::to_string_pretty(&config).context("cannot encode the config")?;
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create the data dir {}", self.root.display()))?;
        self.keep_private()?;
        fs::create_dir_all(&config.shared_dir)
            .with_context(|| format!("cannot create the shared folder {}", config.shared_dir.display()))?;
        write_key(&self.key_path(), &key)?;
        self.identity()?;
        self.save(&config)?;
        Ok((config, key))
    }

    /// Make the data dir, and the database folder in it, readable by this user only
    /// (0700): they hold the keys and every file's name and hash. A data dir made before
    /// this was checked is tightened at its next load.
    fn keep_private(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.root.clone(), self.db_path()] {
            let meta = match fs::metadata(&dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot look at {}", dir.display())),
            };
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).with_context(|| {
                    format!("cannot make {} private to its user (chmod 700 it, as its owner)", dir.display())
                })?;
            }
        }
        Ok(())
    }

    /// Read the config and the key, with a way out when they are missing or broken.
    pub fn load(&self) -> Result<(Config, ClusterKey)> {
        let path = self.config_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no raftshare node is set up in {}: run `raftshare init --shared-dir DIR` first (or pass the right --data-dir)",
                self.root.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid raftshare config", path.display()))?;
        config.raft.check().with_context(|| format!("{} cannot be used", path.display()))?;
        self.keep_private()?;
        let key_path = self.key_path();
        let key_text = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the cluster key {}", key_path.display()))?;
        let key = ClusterKey::from_hex(key_text.trim())
            .with_context(|| format!("{} does not hold a valid cluster key", key_path.display()))?;
        Ok((config, key))
    }

    /// This node's identity key pair, made at `init` (a node set up before identities
    /// existed gets one on its next start).
    pub fn identity(&self) -> Result<Identity> {
        let path = self.root.join(IDENTITY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Identity::from_text(&text).with_context(|| {
                format!(
                    "{} is damaged; stop the node, remove that file and start it again to make a new one",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                write_secret(&path, &identity.to_text(), false)?;
                Ok(identity)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The cluster keys replaced by rotations, oldest first (unreadable lines are skipped).
    pub fn replaced_keys(&self) -> Vec<ClusterKey> {
        let text = fs::read_to_string(self.root.join(REPLACED_KEYS_FILE)).unwrap_or_default();
        text.lines().filter_map(|line| ClusterKey::from_hex(line).ok()).collect()
    }

    /// Make `new` the cluster key on disk, remembering the one it replaces; each file is
    /// replaced atomically, the replaced key first, so a crash loses neither key.
    pub fn replace_key(&self, old: &ClusterKey, new: &ClusterKey) -> Result<()> {
        let mut replaced = self.replaced_keys();
        if !replaced.contains(old) {
            replaced.push(old.clone());
        }
        replaced.retain(|k| k != new);
        let text: String = replaced.iter().map(|k| format!("{}\n", k.to_hex())).collect();
        write_secret(&self.root.join(REPLACED_KEYS_FILE), &text, true)?;
        write_secret(&self.key_path(), &format!("{}\n", new.to_hex()), true)
    }

    /// Write the config atomically (temp file + rename), so a crash never leaves half a file.
    pub fn save(&self, config: &Config) -> Result<()> {
        let text = toml::to_string_pretty(config).context("cannot encode the config")?;
        let path = self.config_path();
        let tmp = path.with_extension("toml.tmp");
        {
            let mut file = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

impl Config {
    /// This config with `change` applied, every new value checked; `data_dir` is where it
    /// is saved (a shared folder must not be inside it).
    pub fn with_change(&self, change: &raftshare_raft::admin::ConfigChange, data_dir: &DataDir) -> Result<Config> {
        let mut next = self.clone();
        if let Some(name) = &change.name {
            let name = name.trim();
            validate_name(name)?;
            next.name = name.to_string();
        }
        if let Some(dir) = &change.shared_dir {
            let dir = dir.trim();
            if dir.is_empty() {
                bail!("the shared folder cannot be empty: give an absolute path such as /home/me/Shared");
            }
            let dir = PathBuf::from(dir);
            if !dir.is_absolute() {
                bail!("the shared folder {} is not an absolute path: give one such as /home/me/Shared", dir.display());
            }
            check_shared_dir(&dir, data_dir.root())?;
            next.shared_dir = dir;
        }
        if let Some(listen) = &change.listen {
            let addr: SocketAddr = listen.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "{listen:?} is not an address to listen on: give ip:port, such as 0.0.0.0:{DEFAULT_PORT}"
                )
            })?;
            if addr.port() == 0 {
                bail!(
                    "give the listen address a fixed port (peers find the node by it), such as {}:{DEFAULT_PORT}",
                    addr.ip()
                );
            }
            // An address this computer does not have would lock the node out at its next
            // start, and the CLI with it (it dials the saved address).
            if !addr.ip().is_unspecified() {
                std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).map_err(|e| {
                    anyhow::anyhow!(
                        "{} is not an address of this computer ({e}): give one of its addresses, or 0.0.0.0:{} for all",
                        addr.ip(),
                        addr.port()
                    )
                })?;
            }
            next.listen = addr;
            next.advertise = advertise_for(addr);
        }
        if let Some(allow) = &change.allow {
            let mut nets = Vec::new();
            for text in allow.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
                let net: IpNet = text.parse().map_err(|_| {
                    anyhow::anyhow!("{text:?} is not a subnet: write it as CIDR, such as 192.168.1.0/24")
                })?;
                nets.push(net);
            }
            next.allow = nets;
        }
        if !next.allow.is_empty() {
            // The CLI and the TUI reach their node on this address: never lock them out.
            let local = match next.listen.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                ip if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            if !next.allow.iter().any(|net| net.contains(&local)) {
                bail!(
                    "the allowed subnets must contain {local}, the address this computer's own `raftshare` commands \
                     connect from: add {} to the list",
                    IpNet::from(local)
                );
            }
        }
        Ok(next)
    }
}

/// The address a peer should dial to reach a node listening on `listen`.
pub fn advertise_for(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let lan = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback());
    SocketAddr::new(lan.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), listen.port())
}

/// The subnets that may connect when the config names none: every interface's subnet, and loopback.
pub fn default_allow() -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().expect("valid net"), "::1/128".parse().expect("valid net")];
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        let net = match iface.addr {
            if_addrs::IfAddr::V4(v4) => ipnet::Ipv4Net::with_netmask(v4.ip, v4.netmask).map(IpNet::V4).ok(),
            if_addrs::IfAddr::V6(v6) => ipnet::Ipv6Net::with_netmask(v6.ip, v6.netmask).map(IpNet::V6).ok(),
        };
        if let Some(net) = net.map(|n| n.trunc()) {
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
    }
    nets
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(|c| c.is_control()) {
        bail!("node name {name:?} is not usable: give 1 to 64 printable characters with --name");
    }
    Ok(())
}

fn new_node_id() -> NodeId {
    // Never 0: it reads as "no node" in logs and JSON consumers.
    loop {
        let id: u64 = rand::random::<u64>() >> 12;
        if id != 0 {
            return id;
        }
    }
}

fn default_name() -> String {
    let host = fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    host.or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "raftshare".to_string())
}

/// Refuses a shared folder (absolute) that cannot be synced safely: not valid UTF-8,
/// not a folder, the whole disk, or one that holds this node's data dir (its private key
/// and database would be synced, and every write to them would look like an edit) or
/// lies inside it, or another node's data dir. Links and `..` are resolved first.
fn check_shared_dir(dir: &Path, data_dir: &Path) -> Result<()> {
    if dir.to_str().is_none() {
        bail!("the shared folder {} is not valid UTF-8: choose a folder whose path is", dir.display());
    }
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a folder: choose a folder to share", dir.display());
    }
    let (shared, data) = (resolved(dir)?, resolved(&absolute(data_dir)?)?);
    if shared.parent().is_none() {
        bail!("the shared folder cannot be {}, the whole disk: choose a folder such as /home/me/Shared", dir.display());
    }
    if data.starts_with(&shared) {
        bail!(
            "the shared folder {} holds this node's data dir {} (its keys and database would be synced): choose a folder beside it",
            dir.display(),
            data_dir.display()
        );
    }
    if shared.starts_with(&data) {
        bail!("the shared folder {} must not be inside the data dir {}", dir.display(), data_dir.display());
    }
    if shared.join(KEY_FILE).exists() && shared.join(CONFIG_FILE).exists() {
        bail!("{} is a raftshare node's data dir, not a folder to share", dir.display());
    }
    Ok(())
}

/// `path` (absolute) with links and `..` resolved as the kernel would, as far as it
/// exists; past that (nothing there can be a link) it is normalised as written.
fn resolved(path: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if fs::symlink_metadata(&out).is_ok() {
                    out = out.canonicalize().with_context(|| format!("cannot resolve the path {}", path.display()))?;
                }
            }
        }
    }
    Ok(out)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve the path {}", path.display()))
}

/// Writes a secret file readable by its owner only: through a synced temp file renamed
/// into place when `replace`, else only if it does not exist yet.
fn write_secret(path: &Path, text: &str, replace: bool) -> Result<()> {
    let target = path.to_path_buf();
    let path = if replace { path.with_extension("tmp") } else { target.clone() };
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    if replace {
        fs::rename(&path, &target).with_context(|| format!("cannot write {}", target.display()))?;
        if let Some(dir) = target.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all()).ok();
        }
    }
    Ok(())
}

fn write_key(path: &Path, key: &ClusterKey) -> Result<()> {
    write_secret(path, &format!("{}\n", key.to_hex()), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(shared: &Path) -> InitOptions {
        InitOptions {
            shared_dir: shared.to_path_buf(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            name: Some("a".into()),
            key: None,
            allow: vec![],
        }
    }

    #[test]
    fn init_then_load_gives_the_same_config_and_a_private_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let (config, key) = dir.init(opts(&tmp.path().join("shared"))).unwrap();
        let (loaded, loaded_key) = dir.load().unwrap();
        assert_eq!(config, loaded);
        assert_eq!(key.to_hex(), loaded_key.to_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.key_path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_replaced_key_is_remembered_and_the_identity_is_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let (_, old) = dir.init(opts(&tmp.path().join("shared"))).unwrap();
        let identity = dir.identity().unwrap();
        assert_eq!(dir.identity().unwrap().public_hex(), identity.public_hex(), "made once, then read back");
        let new = ClusterKey::generate();
        dir.replace_key(&old, &new).unwrap();
        assert_eq!(dir.load().unwrap().1, new);
        assert_eq!(dir.replaced_keys(), vec![old.clone()]);
        let newer = ClusterKey::generate();
        dir.replace_key(&new, &newer).unwrap();
        assert_eq!(dir.replaced_keys(), vec![old, new]);
        #[cfg(unix)]
        for file in [KEY_FILE, IDENTITY_FILE, REPLACED_KEYS_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.root().join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        fs::write(dir.root().join(IDENTITY_FILE), "garbage").unwrap();
        let err = format!("{:#}", dir.identity().unwrap_err());
        assert!(err.contains("damaged") && err.contains("remove that file"), "{err}");
    }

    #[test]
    fn init_refuses_to_overwrite_and_bad_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let mut bad = opts(&tmp.path().join("shared"));
        bad.key = Some("not-hex".into());
        let err = dir.init(bad).unwrap_err();
        assert!(format!("{err:#}").contains("not a raftshare cluster key"), "{err:#}");
        assert!(!dir.is_initialized(), "a failed init leaves nothing behind");
        dir.init(opts(&tmp.path().join("shared"))).unwrap();
        let err = dir.init(opts(&tmp.path().join("shared"))).unwrap_err();
        assert!(err.to_string().contains("already set up"), "{err}");
    }

    #[test]
    fn load_without_init_says_what_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let err = DataDir::new(tmp.path()).load().unwrap_err();
        assert!(err.to_string().contains("raftshare init"), "{err}");
    }

    #[test]
    fn a_shared_folder_that_would_sync_a_data_dir_or_the_whole_disk_is_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let dir = DataDir::new(home.join(".local/share/raftshare"));
        for (shared, says) in [
            (home.clone(), "holds this node's data dir"),
            (PathBuf::from("/"), "the whole disk"),
            (home.join(".local/share/raftshare/db"), "inside the data dir"),
            (home.join("x/../.local/share/raftshare/new"), "inside the data dir"),
        ] {
            let err = format!("{:#}", dir.init(opts(&shared)).unwrap_err());
            assert!(err.contains(says), "{}: {err}", shared.display());
            assert!(!dir.root().exists(), "{}: a refused init writes nothing", shared.display());
        }
        // Through a link to the data dir's parent.
        fs::create_dir_all(home.join(".local/share")).unwrap();
        std::os::unix::fs::symlink(home.join(".local/share"), tmp.path().join("link")).unwrap();
        let err = format!("{:#}", dir.init(opts(&tmp.path().join("link"))).unwrap_err());
        assert!(err.contains("holds this node's data dir"), "{err}");
        // A path that is not UTF-8 is refused before anything is written.
        use std::os::unix::ffi::OsStrExt;
        let odd = tmp.path().join(std::ffi::OsStr::from_bytes(b"not-\xffutf8"));
        let err = format!("{:#}", dir.init(opts(&odd)).unwrap_err());
        assert!(err.contains("not valid UTF-8"), "{err}");
        assert!(!dir.root().exists() && !odd.exists());

        // The same checks for a change, and another node's data dir.
        let (config, _) = dir.init(opts(&tmp.path().join("shared"))).unwrap();
        let other = DataDir::new(tmp.path().join("other"));
        other.init(opts(&tmp.path().join("other-shared"))).unwrap();
        for (shared, says) in
            [(home.clone(), "holds this node's data dir"), (other.root().to_path_buf(), "data dir, not")]
        {
            let change = raftshare_raft::admin::ConfigChange {
                shared_dir: Some(shared.display().to_string()),
                ..Default::default()
            };
            let err = format!("{:#}", config.with_change(&change, &dir).unwrap_err());
            assert!(err.contains(says), "{}: {err}", shared.display());
        }
    }

    #[test]
    fn a_name_is_counted_in_characters_and_trimmed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let named = |name: &str| InitOptions { name: Some(name.into()), ..opts(&tmp.path().join("shared")) };
        assert!(format!("{:#}", dir.init(named("   ")).unwrap_err()).contains("not usable"));
        assert!(dir.init(named(&"é".repeat(65))).is_err());
        let (config, _) = dir.init(named(&format!(" {} ", "é".repeat(64)))).unwrap();
        assert_eq!(config.name, "é".repeat(64));
    }

    #[test]
    fn a_listen_address_this_computer_does_not_have_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let (config, _) = dir.init(opts(&tmp.path().join("shared"))).unwrap();
        let change =
            |listen: &str| raftshare_raft::admin::ConfigChange { listen: Some(listen.into()), ..Default::default() };
        // 192.0.2.0/24 is reserved for documentation: no computer has it.
        let err = format!("{:#}", config.with_change(&change("192.0.2.99:7070"), &dir).unwrap_err());
        assert!(err.contains("not an address of this computer"), "{err}");
        assert_eq!(config.with_change(&change("127.0.0.1:7070"), &dir).unwrap().listen.port(), 7070);
        assert_eq!(config.with_change(&change("0.0.0.0:7071"), &dir).unwrap().listen.port(), 7071);
    }
}

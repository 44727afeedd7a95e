//! The CLI's side of the admin service: reach this data dir's running node over its
//! local socket (the same requests peers use, on a socket only this user may open), and
//! ask it one thing.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{Client, TransportConfig};

use crate::config::{Config, DataDir};

/// How long a query may take; membership changes get longer (see `call_slow`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(180);

/// A connection from the CLI to its own running node.
pub struct NodeClient {
    pub config: Config,
    addr: String,
    client: Client,
}

impl NodeClient {
    /// Connect to the node of `data_dir`, over its own socket in the data dir (whose
    /// permissions are the credential: the node takes changes of itself from there only).
    pub async fn connect(data_dir: &DataDir) -> Result<Self> {
        let (config, _) = data_dir.load()?;
        let path = data_dir.socket_path();
        let addr = path.display().to_string();
        let client = Client::connect_local(&path, TransportConfig::DEFAULT_MAX_FRAME, QUERY_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "cannot talk to the raftshare node of {}: is `raftshare run --data-dir {}` started?",
                    data_dir.root().display(),
                    data_dir.root().display()
                )
            })?;
        Ok(NodeClient { config, addr, client })
    }

    /// Ask a question that should be answered at once.
    pub async fn query(&self, req: AdminRequest) -> Result<AdminResponse> {
        self.call(req, QUERY_TIMEOUT).await
    }

    /// Ask something the node may hold for a while (a long poll for events).
    pub async fn query_long(&self, req: AdminRequest) -> Result<AdminResponse> {
        self.call(req, QUERY_TIMEOUT + Duration::from_secs(30)).await
    }

    /// Ask for a change that may wait for the cluster (a join waits for the log to copy).
    pub async fn change(&self, req: AdminRequest) -> Result<AdminResponse> {
        self.call(req, CHANGE_TIMEOUT).await
    }

    async fn call(&self, req: AdminRequest, timeout: Duration) -> Result<AdminResponse> {
        match self.client.call(Request::Admin(req), timeout).await {
            Ok(Response::Admin(resp)) => Ok(resp),
            Ok(Response::Error(e)) => bail!("{e}"),
            Ok(other) => bail!("the node at {} gave an unexpected answer: {other:?}", self.addr),
            Err(e) => Err(e).with_context(|| format!("the node at {} did not answer", self.addr)),
        }
    }
}

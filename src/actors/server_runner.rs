//! ServerRunner: the requested side of one incoming request.
//!
//! Started by Connections for every private channel (bidirectional stream)
//! a partner opens. The partner's identity comes from its verified
//! certificate; the session checks that its Authent agrees. The data path
//! runs in the runner's own task.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::channel_run::{self, ChannelRun, Command, Files};
use super::context::RunHandle;
use crate::protocol::Session;
use crate::transport::{FrameReader, FrameWriter};

pub enum ServerRunnerMsg {
    Command(Command),
}

pub struct ServerRunnerArgs {
    pub ctx: RunHandle,
    pub partner: String,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// Counts this channel on the link it arrived on while it runs.
    pub guard: super::connections::ChannelGuard,
    /// Counts this stream against the partner's budget while it runs.
    pub slot: super::partner_budget::Slot,
}

pub struct ServerRunner;

pub struct ServerRunnerState {
    control: mpsc::Sender<Command>,
}

impl Actor for ServerRunner {
    type Msg = ServerRunnerMsg;
    type State = ServerRunnerState;
    type Arguments = ServerRunnerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ServerRunnerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tx, rx) = mpsc::channel(4);
        // The request id is learnt from the partner's Request (recorded into the span then).
        let span = tracing::info_span!("request", request_id = tracing::field::Empty, partner = %args.partner);
        let work = async move {
            let _counted = (args.guard, args.slot);
            let session =
                Session::requested(&args.ctx.core.config.node_id, &args.partner, args.ctx.capabilities.clone());
            let reader = FrameReader::with_limits(args.recv, channel_run::read_limits(&args.ctx.core));
            let run = ChannelRun::new(
                args.ctx.clone(),
                args.partner,
                session,
                (reader, FrameWriter::new(args.send)),
                None,
                Files::default(),
            );
            run.run(Vec::new(), rx).await;
        };
        // On a panic the partner sees the channel drop and records the
        // request Interrupted; this node's record is recovered at start-up.
        channel_run::spawn_runner_task(myself, work.instrument(span), async {});
        Ok(ServerRunnerState { control: tx })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ServerRunnerMsg::Command(c) => {
                let _ = state.control.send(c).await;
            }
        }
        Ok(())
    }
}

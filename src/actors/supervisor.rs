//! The node's supervisor: starts Connections and the Commander linked to
//! itself, logs a failed one and starts it again by hand (ractor has no
//! restart strategies). A restarted Commander does not recover requests:
//! the runners of the old one may still be running them.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::commander::{Commander, CommanderArgs, CommanderMsg};
use super::connections::{Connections, ConnectionsMsg};
use super::context::{ActorRefs, NodeContext};

pub struct Supervisor;

pub struct SupervisorState {
    ctx: Arc<NodeContext>,
    refs: ActorRefs,
}

pub enum SupervisorMsg {}

async fn start_commander(
    ctx: &Arc<NodeContext>,
    connections: ActorRef<ConnectionsMsg>,
    recover: bool,
    sup: &ActorRef<SupervisorMsg>,
) -> Result<ActorRef<CommanderMsg>, ActorProcessingErr> {
    let args = CommanderArgs { ctx: ctx.commander_context(), connections, recover };
    Ok(Actor::spawn_linked(None, Commander, args, sup.get_cell()).await?.0)
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (connections, _) =
            Actor::spawn_linked(None, Connections, ctx.connections_context(), myself.get_cell()).await?;
        let commander = start_commander(&ctx, connections.clone(), true, &myself).await?;
        let refs = ActorRefs { commander, connections };
        ctx.actors.set(refs.clone());
        Ok(SupervisorState { ctx, refs })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        if state.ctx.core.shutting_down() {
            return Ok(());
        }
        if cell.get_id() == state.refs.connections.get_id() {
            tracing::error!(reason = %why, "Connections ended; starting it again");
            state.refs.connections =
                Actor::spawn_linked(None, Connections, state.ctx.connections_context(), myself.get_cell()).await?.0;
        } else if cell.get_id() == state.refs.commander.get_id() {
            tracing::error!(reason = %why, "Commander ended; starting it again");
            state.refs.commander = start_commander(&state.ctx, state.refs.connections.clone(), false, &myself).await?;
        }
        state.ctx.actors.set(state.refs.clone());
        Ok(())
    }
}

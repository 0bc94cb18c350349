//! What both API transports serve: the commands, and the access check in
//! front of them.

use crate::access::Access;
use crate::commands::Commands;

pub struct State {
    pub commands: Commands,
    pub access: Access,
    /// Serve the seed's `GET /?content=…` form.
    pub seed_form: bool,
}

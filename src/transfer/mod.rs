//! The data path: reading, hashing and sending blocks on the sending side
//! ([`retrieve`], the RetrieveRunner), checking and writing them on the
//! receiving side ([`receive`]). Both run on blocking threads owned by the
//! request's runner, never through actor mailboxes.

pub mod receive;
pub mod retrieve;

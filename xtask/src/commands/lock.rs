//! `lock`, `update` and `fetch`: resolve, pin and bring in sources.

use kraft::session::Session;
use kraft::source::app::{fetch_app, lock_app};
use kraft::source::resolve::Update;

use crate::flags::{AppArgs, UpdateArgs};

pub fn lock(session: &Session, args: &AppArgs) -> anyhow::Result<()> {
    lock_app(session, &args.app, Update::Nothing).map(drop)
}

pub fn update(session: &Session, args: &UpdateArgs) -> anyhow::Result<()> {
    let update = if args.components.is_empty() { Update::All } else { Update::Only(args.components.clone()) };
    lock_app(session, &args.app, update).map(drop)
}

pub fn fetch(session: &Session, args: &AppArgs) -> anyhow::Result<()> {
    fetch_app(session, &args.app).map(drop)
}

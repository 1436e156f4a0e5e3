"""`ckptfs access`: who may do what in which project (docs/access.md).
Registered on the main command group by `ckptfs.cli`."""
import click

from ckptfs.cli import main, open_store
from ckptfs.cli_meta import check_settings_project, print_table
from ckptfs.store.access import (ALL, ROLES, describe_actor, parse_principal, process_actor,
                                 role_rank)


@main.group()
def access():
    """Roles per project (reader < writer < maintainer < admin) for Unix users and
    groups; PROJECT `*` means every project. Enforced by the mount daemon and the CLI
    once `ckptfs access enforce STORE on` (or `ckptfs init --shared`)."""


@access.command("grant")
@click.argument("store")
@click.argument("project")
@click.argument("role", type=click.Choice(ROLES))
@click.argument("principal", metavar="user:NAME|group:NAME")
def grant(store, project, role, principal):
    """Give PRINCIPAL ROLE on PROJECT (replacing the role it had there). Needs admin on
    PROJECT (on `*` for `*`) when enforced."""
    with open_store(store) as s:
        event = s.grant(project, principal, role)
    if event is None:
        click.echo(f"{parse_principal(principal)} already has role {role} on {project}")
    else:
        was = f" (was {event['previous']})" if event["previous"] else ""
        click.echo(f"granted {event['principal']} {role} on {project}{was}")


@access.command("revoke")
@click.argument("store")
@click.argument("project")
@click.argument("principal", metavar="user:NAME|group:NAME")
def revoke(store, project, principal):
    """Take away PRINCIPAL's grant on PROJECT (grants on `*` are separate)."""
    with open_store(store) as s:
        event = s.revoke(project, principal)
    click.echo(f"revoked {event['principal']} on {project} (was {event['previous']})")


@access.command("show")
@click.argument("store")
@click.argument("project", required=False)
def show(store, project):
    """The grants (of PROJECT: its own and those on `*`), whether they are enforced,
    and your own role. When enforced, only the grants of projects you can read (and
    those on `*`, so you know whom to ask)."""
    actor = process_actor()
    with open_store(store) as s:
        if project is not None:
            check_settings_project(project)
            s.authorize(actor, project, "reader", "see the grants")
        grants = s.access_grants()
        enforced = s.enforcing()
        yours = s.role_of(actor, project or ALL)
        visible = [p for p in sorted(grants) if p == ALL or s.allowed(actor, p, "reader")]
    if project is not None:
        visible = [p for p in visible if p in (project, ALL)]
    rows = [[p, principal, role] for p in visible
            for principal, role in sorted(grants[p].items(),
                                          key=lambda item: (-role_rank(item[1]), item[0]))]
    click.echo(f"enforcement: {'on' if enforced else 'off'}")
    if rows:
        print_table(["project", "principal", "role"], rows)
    else:
        click.echo("no grants")
    click.echo(f"{describe_actor(actor)} has role {yours or 'none'} on {project or ALL}"
               + ("" if enforced else " (not enforced: everyone may do everything)"))


@access.command("enforce")
@click.argument("store")
@click.argument("state", type=click.Choice(["on", "off"]))
def enforce(store, state):
    """Turn enforcement of the roles on or off (needs admin on `*`)."""
    with open_store(store) as s:
        event = s.set_enforcement(state == "on")
    if event is None:
        click.echo(f"enforcement is already {state}")
    else:
        click.echo(f"enforcement {state}" + (": the mount daemon and the CLI check every "
                                              "request against the grants" if state == "on"
                                              else ": everyone may do everything"))

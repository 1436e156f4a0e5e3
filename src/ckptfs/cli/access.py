"""`ckptfs access`: who may do what in which project (docs/access.md). Changing it
needs admin: the store's `grant`, `revoke` and `set_enforcement` check it."""
import click

from ckptfs.cli._common import (EVERY_PROJECT, ROLES, complete_names, echo_json, examples, json_option,
                                print_table, settings_project, with_store)


def shown_project(project: str | None, **_) -> str | None:
    """The project whose grants `access show` shows (None: all it may read)."""
    return None if project is None else settings_project(project)


@click.group(epilog=examples(
    "ckptfs access grant /data/ckpts bert writer group:ml-team",
    "ckptfs access show /data/ckpts"))
def access():
    """Roles per project (reader < writer < maintainer < admin) for Unix users and
    groups; PROJECT `*` means every project. Enforced by the mount daemon and the CLI
    once `ckptfs access enforce STORE on` (or `ckptfs init --shared`)."""


@access.command("grant", epilog=examples(
    "ckptfs access grant /data/ckpts bert reader user:alice",
    "ckptfs access grant /data/ckpts '*' maintainer user:bob"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@click.argument("role", type=click.Choice(ROLES))
@click.argument("principal", metavar="user:NAME|group:NAME")
@with_store("admin", checked_by_store=True)
def grant(s, store, project, role, principal):
    """Give PRINCIPAL ROLE on PROJECT (replacing the role it had there). Needs admin on
    PROJECT (on `*` for `*`) when enforced."""
    from ckptfs.store.access import parse_principal
    event = s.grant(project, principal, role)
    if event is None:
        click.echo(f"{parse_principal(principal)} already has role {role} on {project}")
    else:
        was = f" (was {event['previous']})" if event["previous"] else ""
        click.echo(f"granted {event['principal']} {role} on {project}{was}")


@access.command("revoke", epilog=examples("ckptfs access revoke /data/ckpts bert user:alice"))
@click.argument("store")
@click.argument("project", shell_complete=complete_names(1))
@click.argument("principal", metavar="user:NAME|group:NAME")
@with_store("admin", checked_by_store=True)
def revoke(s, store, project, principal):
    """Take away PRINCIPAL's grant on PROJECT (grants on `*` are separate)."""
    event = s.revoke(project, principal)
    click.echo(f"revoked {event['principal']} on {project} (was {event['previous']})")


@access.command("show", epilog=examples(
    "ckptfs access show /data/ckpts",
    "ckptfs access show /data/ckpts bert",
    "ckptfs access show /data/ckpts bert --json | jq -r .you.role"))
@click.argument("store")
@click.argument("project", required=False, shell_complete=complete_names(1))
@json_option('the grants: {"enforced", "grants": [{"project", "principal", "role"}], '
             '"you": {"uid", "user", "project", "role"}}')
@with_store("reader", "see the grants", project=shown_project)
def show(s, store, project, as_json):
    """The grants (of PROJECT: its own and those on `*`), whether they are enforced,
    and your own role. When enforced, only the grants of projects you can read (and
    those on `*`, so you know whom to ask)."""
    from ckptfs.store.access import describe_actor, process_actor, role_rank
    from ckptfs.store.users import user_name
    actor = process_actor()
    grants = s.access_grants()
    enforced = s.enforcing()
    yours = s.role_of(actor, project or EVERY_PROJECT)
    visible = [p for p in sorted(grants) if p == EVERY_PROJECT or s.allowed(actor, p, "reader")]
    if project is not None:
        visible = [p for p in visible if p in (project, EVERY_PROJECT)]
    rows = [[p, principal, role] for p in visible
            for principal, role in sorted(grants[p].items(),
                                          key=lambda item: (-role_rank(item[1]), item[0]))]
    if as_json:
        return echo_json({
            "enforced": enforced,
            "grants": [{"project": p, "principal": who, "role": role} for p, who, role in rows],
            "you": {"uid": actor["uid"], "user": user_name(actor["uid"]),
                    "project": project or EVERY_PROJECT, "role": yours}})
    click.echo(f"enforcement: {'on' if enforced else 'off'}")
    if rows:
        print_table(["project", "principal", "role"], rows)
    else:
        click.echo("no grants")
    click.echo(f"{describe_actor(actor)} has role {yours or 'none'} on {project or EVERY_PROJECT}"
               + ("" if enforced else " (not enforced: everyone may do everything)"))


@access.command("enforce", epilog=examples("ckptfs access enforce /data/ckpts on"))
@click.argument("store")
@click.argument("state", type=click.Choice(["on", "off"]))
@with_store("admin", checked_by_store=True)
def enforce(s, store, state):
    """Turn enforcement of the roles on or off (needs admin on `*`)."""
    event = s.set_enforcement(state == "on")
    if event is None:
        click.echo(f"enforcement is already {state}")
    else:
        click.echo(f"enforcement {state}" + (": the mount daemon and the CLI check every "
                                              "request against the grants" if state == "on"
                                              else ": everyone may do everything"))


COMMANDS = (access,)

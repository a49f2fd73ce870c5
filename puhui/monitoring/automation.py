"""The Prefect automation that pages someone when the report flow is flagged or fails.

Where a Prefect server is used (``puhui server start`` or an operator's ``PREFECT_API_URL``),
the report flow makes sure this automation exists before it runs: a run of the ``report``
flow entering a state named ``Flagged`` (an ``act`` light), ``Failed`` or ``Crashed`` makes the
server call the alert webhook (``PUHUI_ALERT_WEBHOOK``, kept in a Webhook block). The flow's
own POST carries the alert details; the automation is the server's guarantee, and it also
fires when the flow could not post (failed or crashed before the alert step).

Idempotent: the block is saved over by name and the automation found by name is updated in
place, so every run leaves exactly one of each. Without a webhook URL there is nothing to
call (email and incidents are Prefect Cloud only): no automation, and the flow says so.
"""

from __future__ import annotations

from typing import Any

AUTOMATION_NAME = "puhui-report-alert"
WEBHOOK_BLOCK = "puhui-alert-webhook"
FLOW_NAME = "report"
STATES = ("Flagged", "Failed", "Crashed")
# Jinja, rendered by the server: which run, which state, and why (the state message).
PAYLOAD = ('{"source": "prefect-automation", "flow": "{{ flow.name }}", '
           '"flow_run": "{{ flow_run.name }}", "flow_run_id": "{{ flow_run.id }}", '
           '"state": "{{ flow_run.state.name }}", '
           '"why": {{ flow_run.state.message | tojson }}}')


def report_automation(block_document_id: Any) -> Any:
    """The automation object (not yet sent anywhere)."""
    from prefect.automations import Automation
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=AUTOMATION_NAME,
        description="Puhui early warning: the report flow was flagged (an act light) or "
                    "failed; calls PUHUI_ALERT_WEBHOOK.",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow",
                           "prefect.resource.name": FLOW_NAME},
            posture=Posture.Reactive, threshold=1),
        actions=[CallWebhook(block_document_id=block_document_id, payload=PAYLOAD)])


def ensure_report_automation(webhook_url: str) -> tuple[Any, bool]:
    """Save the webhook block and create or update the automation; returns (id, created)."""
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook

    block_id = Webhook(url=webhook_url).save(WEBHOOK_BLOCK, overwrite=True)
    wanted = report_automation(block_id)
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:  # Prefect's "not found"
        return wanted.create().id, True
    wanted.id = existing.id
    wanted.update()
    return existing.id, False

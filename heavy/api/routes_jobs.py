"""/v1/jobs: submit, list, read, control (cancel, finish now, approve) and the report."""

from __future__ import annotations

import contextlib
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, BackgroundTasks, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from heavy.api.deps import SettingsDep, StoreDep, TenantDep
from heavy.api.errors import error_responses
from heavy.api.models import JobCreate, JobList, JobPublic, Report, plan_for
from heavy.api.report_html import report_html
from heavy.metrics import JOBS_SUBMITTED
from heavy.store import JobRecord
from heavy.store.job_list import Cursor, JobPage
from heavy.store.records import ACTIVE, STATUSES
from heavy.webhooks import deliver

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="job id")]
SUBMITTED_HEADERS = {
    "Location": {"description": "the job's URL", "required": True, "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when an earlier request with this Idempotency-Key made the job",
                            "schema": {"type": "string", "enum": ["true"]}},
}


MAX_OFFSET = 1_000_000


def public(job: JobRecord, request: Request) -> JobPublic:
    return JobPublic(**job.public(), links=job.links(root_path(request)))


def root_path(request: Request) -> str:
    """Where a proxy mounts the API ('' for nowhere: at /), for the URLs it gives."""
    return request.scope.get("root_path", "").rstrip("/")


@router.post("", status_code=202, response_model=JobPublic,
             responses={**error_responses(400, 409, 415, 429), 202: {"headers": SUBMITTED_HEADERS}})
async def submit_job(
    body: JobCreate, tenant: TenantDep, store: StoreDep, settings: SettingsDep, request: Request, response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128, pattern="^[ -~]+$")] = None,
) -> JobPublic:
    """Queue a research job (or hold it for approval when `review` is true). Resubmitting with the same
    `Idempotency-Key` returns the first job instead of a new one."""
    try:
        params = body.resolve(settings)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    mode = body.mode or settings.mode
    plan = plan_for(body.question, mode, params, settings) if body.review else None
    job, replayed = await store.jobs.submit(tenant, question=body.question, mode=mode, params=params,
                                            review=body.review, plan=plan, idempotency_key=idempotency_key,
                                            fingerprint=body.fingerprint(), callback_url=body.callback_url or "",
                                            callback_secret=body.callback_secret or "")
    created = public(job, request)
    response.headers["Location"] = created.links["self"]
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        JOBS_SUBMITTED.labels(mode).inc()
    return created


@router.get("", response_model=JobList, responses=error_responses())
async def list_jobs(
    tenant: TenantDep, store: StoreDep, request: Request,
    cursor: Annotated[str | None, Query(max_length=200, description="where the page is: opaque, from a page's "
                                        "`links.next` or `links.prev`; it holds its place while jobs are submitted "
                                        "or deleted")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="where the page starts, by position (for clients "
                                 "that build their own URLs: a job submitted or deleted between two reads moves "
                                 "the pages by one); not with `cursor`")] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[str | None, Query(description="only jobs in these statuses, comma-separated "
                                                    "(e.g. queued,running); `active` names all unended ones")] = None,
) -> JobList:
    """The caller's jobs, newest first (`total` counts those the filter keeps); `links.next` is the next page's URL
    while there is one, `links.prev` the previous page's."""
    at = _cursor(cursor, "offset" in request.query_params)
    page = await store.jobs.page(tenant, offset=offset, limit=limit, statuses=_statuses(status), cursor=at)
    return JobList(jobs=[public(j, request) for j in page.jobs], total=page.total, offset=page.position, limit=limit,
                   links=_page_links(request, page, at, offset, limit, status))


def _cursor(token: str | None, with_offset: bool) -> Cursor | None:
    if token is None:
        return None
    if with_offset:
        raise HTTPException(422, "cursor: give a cursor or an offset, not both")
    try:
        return Cursor.decode(token)
    except ValueError as exc:
        raise HTTPException(422, f"cursor: {exc}") from None


def _page_links(request: Request, page: JobPage, at: Cursor | None, offset: int, limit: int,
                status: str | None) -> dict[str, str]:
    """This page's URL (as asked), the next one's while jobs follow, the previous one's after the first: the same
    query at another cursor (the status filter kept)."""

    def page_at(where: dict[str, str | int]) -> str:
        query = {**where, "limit": limit, **({"status": status} if status is not None else {})}
        return f"{root_path(request)}/v1/jobs?{urlencode(query)}"

    links = {"self": page_at({"cursor": at.encode()} if at is not None else {"offset": offset})}
    if page.older is not None:
        links["next"] = page_at({"cursor": page.older.encode()})
    if page.newer is not None:
        links["prev"] = page_at({"cursor": page.newer.encode()})
    return links


def _statuses(status: str | None) -> frozenset[str]:
    names = {name.strip() for name in (status or "").split(",") if name.strip()}
    if "active" in names:
        names = (names - {"active"}) | set(ACTIVE)
    if unknown := names - set(STATUSES):
        raise HTTPException(422, f"status: unknown {sorted(unknown)[0]!r}; use {', '.join(STATUSES)} or active")
    return frozenset(names)


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404))
async def get_job(job_id: JobId, tenant: TenantDep, store: StoreDep, request: Request) -> JobPublic:
    return public(await store.jobs.get(job_id, tenant), request)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=error_responses(404, 409))
async def cancel_job(job_id: JobId, tenant: TenantDep, store: StoreDep, settings: SettingsDep,
                     background: BackgroundTasks, request: Request) -> JobPublic:
    """Cancel: a queued job at once, a running one within a second (no report is written)."""
    job = await store.jobs.cancel(job_id, tenant)
    if job.terminal:  # ended here (queued): no worker will post its callback; sent once whoever tries
        background.add_task(deliver, store.jobs, job.id, settings)
    return public(job, request)


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=error_responses(404, 409))
async def delete_job(job_id: JobId, tenant: TenantDep, store: StoreDep) -> Response:
    """Delete an ended job with its events, checkpoints and report (409 while it is active: cancel it first).
    Ended jobs are also deleted `HEAVY_JOB_RETENTION_S` after they ended (30 days by default)."""
    await store.jobs.delete(job_id, tenant)
    return Response(status_code=204)


@router.post("/{job_id}/finish", response_model=JobPublic, responses=error_responses(404, 409))
async def finish_job(job_id: JobId, tenant: TenantDep, store: StoreDep, request: Request) -> JobPublic:
    """Stop the trajectories now and aggregate what they found (a partial report)."""
    return public(await store.jobs.finish_now(job_id, tenant), request)


@router.post("/{job_id}/approve", response_model=JobPublic, responses=error_responses(404, 409, 429))
async def approve_job(job_id: JobId, tenant: TenantDep, store: StoreDep, request: Request) -> JobPublic:
    """Run a job that waits in `awaiting_approval`."""
    return public(await store.jobs.approve(job_id, tenant), request)


@router.get(
    "/{job_id}/report", response_model=Report, responses={**error_responses(404, 406, 409), 200: {
        "content": {"text/markdown": {}, "text/html": {}},
        "description": "the report: JSON (answer, agreement, sources, trajectories), Markdown, or the Markdown as an "
                       "HTML fragment (citations linked to their sources), by Accept"}},
)
async def get_report(job_id: JobId, tenant: TenantDep, store: StoreDep, request: Request) -> Response:
    job = await store.jobs.get(job_id, tenant)
    report = await store.jobs.get_report(job_id)
    if report is None:
        detail = "the job was cancelled" if job.status == "cancelled" else f"the job is {job.status}"
        raise HTTPException(409, f"no report: {detail}")
    markdown, result = report
    wanted = _negotiate(request.headers.get("accept", ""))
    if wanted is None:
        raise HTTPException(406, "report is available as application/json, text/markdown or text/html")
    if wanted == "markdown":
        return PlainTextResponse(markdown, media_type="text/markdown; charset=utf-8")
    if wanted == "html":
        return HTMLResponse(report_html(markdown))
    return JSONResponse(result)


def _negotiate(accept: str) -> str | None:
    """'markdown', 'html' or 'json' by the most preferred acceptable media type in the header (by q-value, then
    order; q=0 refuses a type), JSON when there is none."""
    offered = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (piece.strip().lower() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                with contextlib.suppress(ValueError):  # a malformed q: as if none were given
                    quality = float(value)
        if quality > 0:
            offered.append((-quality, position, media))
    if not offered:
        return "json" if not accept.strip() else None
    for _, _, media in sorted(offered):
        if media == "text/html":
            return "html"
        if media in ("text/markdown", "text/x-markdown", "text/plain", "text/*"):
            return "markdown"
        if media in ("application/json", "application/*", "*/*", ""):
            return "json"
    return None

"""The Celery side of scanfleet, and the only package that imports `celery`.

    worker.app       create_app(settings), the task names and queue, the fan-out publisher
    worker.tasks     every task, registered one way, retries from clock.RETRY_DELAYS
    worker.schedule  Celery beat: sweeps on cron (croniter), janitor and retention

Tasks are thin: decode, bind log context, call one service (runs, sweeping, janitor,
retention). Nothing outside this package may import it except the CLI's worker and beat
commands, lazily.
"""

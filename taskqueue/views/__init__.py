"""Who did what: event records (events), kept (store), reported (report, report_text, timeline),
and watched live (live, live_screen, watch).
"""

-- 100 connections each waiting 50 ms between requests: ~2,000 req/s.
wrk.headers["x-token"] = "secret"
function delay() return 50 end

-- wrk script: POST one AdmissionReview body on every request of every connection.
--
--   wrk -t1 -c16 -d3s -s bench/post.lua https://127.0.0.1:8443/mutate -- BODY.json
--
-- BODY.json is sent as is, with Content-Type application/json, over wrk's keep-alive
-- connections. No response() function: wrk then skips parsing response bodies. done()
-- prints one line that bench/run.py parses (durations and latencies in microseconds).

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = file:read("*a")
   file:close()
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "wrk-result requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end

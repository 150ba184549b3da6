package main

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs every case on a few hundred messages against the local
// services, so the benchmark program keeps working as the library changes.
// It checks that each case ran and produced its outputs, never how fast.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	opts, err := parseFlags([]string{"-smoke",
		"-json", filepath.Join(dir, "bench.json"),
		"-md", filepath.Join(dir, "bench.md"),
		"-chart", filepath.Join(dir, "bench.png")})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeOutputs(rep, opts); err != nil {
		t.Fatal(err)
	}

	want := []string{resultDBCeiling, resultBrokerCeiling, resultIngestInbox, resultIngestNaive, resultIngestWatermill,
		resultProcessingInbox, resultProcessingEmit, resultProcessingRiver, resultDBProcessing, resultBlockedClean, resultBlockedInbox,
		resultOrderedInbox, latencyFixedID, latencySaturationID, resultRelayRaw, resultRelayInbox, resultRelayLatency, resultScaleInbox}
	for _, id := range want {
		res, ok := rep.result(id)
		if !ok {
			t.Errorf("no result %s", id)
			continue
		}
		if res.Messages <= 0 || res.Rate <= 0 || res.Settings == "" {
			t.Errorf("result %s is incomplete: %+v", id, res)
		}
	}
	for _, id := range []string{latencyFixedID, latencySaturationID, resultRelayLatency} {
		res, _ := rep.result(id)
		if res.Latency == nil || res.Latency.Samples != res.Messages {
			t.Errorf("%s: every handled message should give a latency sample: %+v", id, res.Latency)
		}
	}
	for _, id := range []string{resultProcessingInbox, resultScaleInbox} {
		if res, _ := rep.result(id); res.Memory == nil || res.Memory.PeakHeapInuseMiB <= 0 {
			t.Errorf("%s: no memory figures", id)
		}
	}
	// The claim tracer recognises the library's claim statements (claimSQL).
	for _, id := range []string{resultProcessingInbox, resultBlockedClean, resultBlockedInbox, resultScaleInbox, resultRelayInbox} {
		if res, _ := rep.result(id); res.Claims == nil || res.Claims.Claims == 0 || res.Claims.P99Ms <= 0 {
			t.Errorf("%s: no claims timed (%+v): does claimSQL still match the library's claim?", id, res.Claims)
		}
	}
	// Every targeted comparison of the issue is there, with a verdict.
	targeted := 0
	for _, c := range rep.Comparisons {
		if c.Op != "" {
			targeted++
			if c.Met == nil {
				t.Errorf("comparison %q has a target but no verdict", c.Name)
			}
		}
	}
	if targeted != 11 {
		t.Errorf("%d targeted comparisons, want 11: %+v", targeted, rep.Comparisons)
	}

	decoded, err := readReport(opts.JSON)
	if err != nil {
		t.Fatalf("JSON output does not decode: %v", err)
	}
	if len(decoded.Results) != len(want) || len(decoded.Comparisons) != len(rep.Comparisons) {
		t.Errorf("JSON output has %d results and %d comparisons", len(decoded.Results), len(decoded.Comparisons))
	}
	md, err := os.ReadFile(opts.MD)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| Processing: River, no-op worker |") || !strings.Contains(string(md), "| processing vs River |") {
		t.Errorf("Markdown output lacks the result and comparison rows:\n%s", md)
	}
	checkPNG(t, opts.Chart)
	if _, err := os.Stat("/proc/stat"); err == nil { // Linux: the CPU figures are read from /proc
		for _, id := range []string{resultBrokerCeiling, resultIngestInbox, resultProcessingInbox} {
			if res, _ := rep.result(id); res.CPU == nil || res.CPU.BenchMicros <= 0 {
				t.Errorf("%s: no CPU figures (%+v)", id, res.CPU)
			}
		}
	}

	// -redraw writes the same tables, and a chart, from the JSON alone.
	again, err := parseFlags([]string{"-redraw", opts.JSON, "-md", filepath.Join(dir, "again.md"), "-chart", filepath.Join(dir, "again.png")})
	if err != nil {
		t.Fatal(err)
	}
	if err := runMain(ctx, again); err != nil {
		t.Fatal(err)
	}
	redrawn, err := os.ReadFile(again.MD)
	if err != nil {
		t.Fatal(err)
	}
	if string(redrawn) != string(md) {
		t.Errorf("-redraw wrote other tables:\n%s\nwant:\n%s", redrawn, md)
	}
	checkPNG(t, again.Chart)
}

// TestSoakSmoke runs a few seconds of the soak with short buckets at a
// given rate, and checks every bucket and both outputs are there.
func TestSoakSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	opts, err := parseFlags([]string{"-soak", "4s", "-soak-bucket", "2s", "-soak-rate", "100",
		"-soak-retention", "1s", "-soak-maintenance", "500ms", "-soak-vacuum-cost-delay", "0", "-soak-outbox",
		"-json", filepath.Join(dir, "soak.json"), "-chart", filepath.Join(dir, "soak.svg")})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.hasFigures() {
		t.Fatal("a soak at a given rate must have figures to write (runMain writes nothing otherwise)")
	}
	if err := writeOutputs(rep, opts); err != nil {
		t.Fatal(err)
	}
	if rep.Soak == nil || len(rep.Soak.Buckets) != 2 {
		t.Fatalf("want 2 buckets: %+v", rep.Soak)
	}
	if _, ok := rep.result(latencySaturationID); ok {
		t.Error("with -soak-rate the saturation run should be skipped")
	}
	for i, b := range rep.Soak.Buckets {
		if b.MessagesTableMiB <= 0 || b.MessagesIndexesMiB <= 0 || b.RSSMiB <= 0 {
			t.Errorf("bucket %d lacks sizes: %+v", i, b)
		}
	}
	last := rep.Soak.Buckets[len(rep.Soak.Buckets)-1]
	if last.Handled == 0 || last.StreamRows == 0 {
		t.Errorf("the last bucket handled nothing or made no streams: %+v", last)
	}
	if !rep.Soak.Outbox || last.OutboxTableMiB <= 0 || last.OutboxRows == 0 || last.WALMiB <= 0 {
		t.Errorf("with -soak-outbox the handlers enqueue follow-ups, and every bucket writes WAL: %+v", last)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "soak-soak.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("Claim latency")) {
		t.Error("the soak chart is not an SVG with its panels")
	}
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if img.Bounds().Dx() < 500 || img.Bounds().Dy() < 500 {
		t.Errorf("chart is %v", img.Bounds())
	}
}

func TestLatencySummary(t *testing.T) {
	var l latencies
	for i := 100; i >= 1; i-- {
		l.add(time.Duration(i) * time.Millisecond)
	}
	s := l.summary()
	if s.P50Ms != 50 || s.P95Ms != 95 || s.P99Ms != 99 || s.MaxMs != 100 || s.Samples != 100 {
		t.Errorf("summary of 1..100 ms = %+v", s)
	}
	if (&latencies{}).summary() != (Latency{}) {
		t.Error("summary of no samples should be zero")
	}
}

func TestBestKeepsFastestRoundAndHighestMemory(t *testing.T) {
	got := best([]Result{
		{Rate: 10, Seconds: 2, Memory: &Memory{PeakHeapInuseMiB: 9, Samples: 1}},
		{Rate: 20, Seconds: 1, Memory: &Memory{PeakHeapInuseMiB: 3, Samples: 2}},
	})
	if got.Rate != 20 || got.Seconds != 1 {
		t.Errorf("best round = %+v, want the one at rate 20", got)
	}
	if got.Memory.PeakHeapInuseMiB != 9 || got.Memory.Samples != 3 {
		t.Errorf("memory = %+v, want the highest peak of all rounds", got.Memory)
	}
	if len(got.RoundRates) != 2 {
		t.Errorf("round rates = %v", got.RoundRates)
	}
}

func TestCompareTargets(t *testing.T) {
	rep := &Report{Results: []Result{
		{ID: resultProcessingInbox, Rate: 300, Memory: &Memory{PeakHeapInuseMiB: 10}},
		{ID: resultProcessingRiver, Rate: 100},
		{ID: resultOrderedInbox, Rate: 100},
		{ID: latencyFixedID, Latency: &Latency{OfferedRate: 1000, P50Ms: 4, P99Ms: 30}},
	}}
	rep.compare()
	verdicts := map[string]bool{}
	for _, c := range rep.Comparisons {
		verdicts[c.Name] = *c.Met
	}
	want := map[string]bool{
		"processing vs River":                  true,  // 3x >= 3x
		"ordered (1,000 streams) vs unordered": false, // 0.33x < 0.5x
		"latency p50 at 1000 msg/s":            true,
		"latency p99 at 1000 msg/s":            false,
	}
	for name, met := range want {
		if got, ok := verdicts[name]; !ok || got != met {
			t.Errorf("%s: met=%v (present %v), want %v", name, got, ok, met)
		}
	}
	if len(rep.Comparisons) != len(want) {
		t.Errorf("comparisons without both sides should be left out: %+v", rep.Comparisons)
	}
}

// TestCompareRelay checks the relay's comparisons: the ratio to raw
// publishing against its target, the latency figures without one.
func TestCompareRelay(t *testing.T) {
	rep := &Report{Results: []Result{
		{ID: resultRelayRaw, Rate: 1000},
		{ID: resultRelayInbox, Rate: 790},
		{ID: resultRelayLatency, Rate: 495, Latency: &Latency{OfferedRate: 500, P50Ms: 7, P99Ms: 20}},
	}}
	rep.compare()
	if len(rep.Comparisons) != 3 {
		t.Fatalf("comparisons = %+v, want the ratio and two latencies", rep.Comparisons)
	}
	ratio := rep.Comparisons[0]
	if ratio.Against != resultRelayRaw || ratio.Met == nil || *ratio.Met || ratio.Target != 0.8 {
		t.Errorf("0.79x should miss the 0.8x target: %+v", ratio)
	}
	for _, c := range rep.Comparisons[1:] {
		if c.Unit != "ms" || c.Op != "" || c.Of != resultRelayLatency {
			t.Errorf("latency comparison %+v should be in ms, without a target", c)
		}
	}
	if !strings.Contains(rep.Comparisons[2].Name, "p99 at 500 msg/s") || rep.Comparisons[2].Value != 20 {
		t.Errorf("p99 comparison = %+v", rep.Comparisons[2])
	}
	// A run that fell behind its pace says so rather than claim the rate.
	rep.Results[2].Rate = 300
	rep.Comparisons = nil
	rep.compare()
	if name := rep.Comparisons[2].Name; !strings.Contains(name, "offered 500 msg/s, sustained only 300") {
		t.Errorf("p99 comparison of a run behind its pace is named %q", name)
	}
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"-only", "processing,nope"}); err == nil {
		t.Error("an unknown case should be refused")
	}
	o, err := parseFlags([]string{"-only", "ordered, scale", "-messages", "100", "-scale-rows", "1000"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.runs("scale") || o.runs("processing") {
		t.Errorf("-only ordered,scale runs %v", o.Only)
	}
	if _, err := parseFlags([]string{"-messages", "1000", "-scale-rows", "2000"}); err == nil {
		t.Error("a scale backlog smaller than its rounds need should be refused")
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestChartsWithEveryComparison(t *testing.T) {
	rep := &Report{Options: Options{ScaleRows: 1_000_000, Messages: 20000}}
	for _, id := range []string{resultProcessingInbox, resultProcessingRiver, resultOrderedInbox, resultScaleInbox,
		resultIngestInbox, resultIngestNaive, resultIngestWatermill, resultBrokerCeiling, resultDBCeiling, resultDBProcessing,
		resultRelayRaw, resultRelayInbox} {
		rep.Results = append(rep.Results, Result{ID: id, Rate: 1000, Memory: &Memory{PeakHeapInuseMiB: 1}})
	}
	rep.Results = append(rep.Results,
		Result{ID: resultBlockedClean, Rate: 1000, Claims: &ClaimLatency{P50Ms: 1, P99Ms: 2}},
		Result{ID: resultBlockedInbox, Rate: 900, Claims: &ClaimLatency{P50Ms: 2, P99Ms: 4}},
		Result{ID: latencyFixedID, Latency: &Latency{OfferedRate: 1000}},
		Result{ID: resultRelayLatency, Rate: 900, Latency: &Latency{OfferedRate: 1000, P50Ms: 10, P99Ms: 30}})
	rep.Soak = &Soak{OfferedRate: 100, Buckets: []SoakBucket{
		{EndSeconds: 60, P50Ms: 4, P99Ms: 10, Claims: ClaimLatency{P50Ms: 1, P99Ms: 2}, MessagesTableMiB: 1, MessagesIndexesMiB: 1, StreamsMiB: 1, RSSMiB: 20},
		{EndSeconds: 120, P50Ms: 5, P99Ms: 10, Claims: ClaimLatency{P50Ms: 1, P99Ms: 3}, MessagesTableMiB: 2, MessagesIndexesMiB: 1, StreamsMiB: 1, RSSMiB: 20},
	}}
	rep.compare()
	dir := t.TempDir()
	path := filepath.Join(dir, "chart.png")
	if err := writeCharts(rep, path); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, path)
	checkPNG(t, filepath.Join(dir, "chart-soak.png"))
	verdicts := map[string]bool{}
	for _, c := range rep.Comparisons {
		if c.Met != nil {
			verdicts[c.Name] = *c.Met
		}
	}
	want := map[string]bool{
		"blocked rows vs clean":                    true,  // 0.9x >= 0.9x
		"soak, last vs first bucket: latency p50":  false, // 1.25x > 1.2x
		"soak, last vs first bucket: claim p99":    false, // 1.5x
		"soak, last vs first bucket: latency p99":  true,
		"processing vs River":                      false, // 1x < 3x
		"ingest vs Watermill (no-op handler)":      true,
		"relay vs amqp091-go confirmed publishing": true, // 1x >= 0.8x
	}
	for name, met := range want {
		if got, ok := verdicts[name]; !ok || got != met {
			t.Errorf("%s: met=%v (present %v), want %v", name, got, ok, met)
		}
	}
}

// A server process that ends between the readings must not count against
// the others: the broker's helpers come and go.
func TestCPUUsedCountsOnlyLiveProcesses(t *testing.T) {
	start := map[int]float64{1: 5, 2: 3}
	end := map[int]float64{1: 7, 3: 1} // 2 ended, 3 is new
	if got := used(start, end); got != 3 {
		t.Fatalf("used = %v, want 3 (2 by process 1, 1 by process 3)", got)
	}
}

package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	_ "gonum.org/v1/plot/vg/vgimg" // registers png
	_ "gonum.org/v1/plot/vg/vgsvg" // registers svg
)

// chartLabels are the short names of results in the chart, by result ID;
// other results show their title. The fixed-rate latency run is left out
// of the throughput panel, as is the relay's: their rate is the offered
// load.
var chartLabels = map[string]string{
	resultDBCeiling:       "DB ceiling: batched insert",
	resultBrokerCeiling:   "Broker ceiling: ack only",
	resultIngestInbox:     "Ingest: inbox receiver",
	resultIngestNaive:     "Ingest: naive consumer",
	resultIngestWatermill: "Ingest: Watermill, no-op",
	resultDBProcessing:    "DB ceiling: claim + mark done",
	resultProcessingInbox: "Process: inbox",
	resultProcessingRiver: "Process: River",
	resultProcessingEmit:  "Process: inbox, emitting",
	resultBlockedClean:    "Process: inbox, clean",
	resultBlockedInbox:    "Process: inbox, blocked rows",
	resultOrderedInbox:    "Ordered: inbox, 1000 streams",
	latencySaturationID:   "End to end at saturation",
	resultScaleInbox:      "Scale: inbox, %s pending",
	resultRelayRaw:        "Publish ceiling: amqp091-go confirms",
	resultRelayInbox:      "Relay: outbox to RabbitMQ",
}

var (
	colorInbox   = color.RGBA{46, 110, 180, 255}
	colorOther   = color.RGBA{160, 160, 160, 255}
	colorMet     = color.RGBA{50, 150, 70, 255}
	colorMissed  = color.RGBA{200, 60, 50, 255}
	colorNeutral = color.RGBA{120, 140, 170, 255}
	colorBroker  = color.RGBA{230, 140, 40, 255}
	colorDB      = color.RGBA{120, 80, 160, 255}
)

// chartLabel is the label of a result in the chart.
func chartLabel(rep *Report, r Result) string {
	l, ok := chartLabels[r.ID]
	switch {
	case !ok:
		return r.Title
	case r.ID == resultScaleInbox:
		return fmt.Sprintf(l, shortCount(rep.Options.ScaleRows))
	}
	return l
}

// isInbox tells the inbox's own results (drawn in blue) from ceilings and
// peers (grey).
func isInbox(id string) bool {
	return strings.HasSuffix(id, "/inbox") || strings.HasPrefix(id, "latency/") || id == resultBlockedClean
}

// Scores are drawn up to this many times the target; longer bars are cut,
// with their value written beside them.
const maxScore = 3.0

// writeCharts writes the results chart to path (its extension, .png or
// .svg, is the format) and, after a soak, the soak's chart beside it as
// NAME-soak.EXT.
func writeCharts(rep *Report, path string) error {
	var panels []*plot.Plot
	rates, err := ratesPlot(rep)
	if err != nil {
		return err
	}
	if rates != nil {
		panels = append(panels, rates)
	}
	scores, err := scoresPlot(rep.Comparisons)
	if err != nil {
		return err
	}
	if scores != nil {
		panels = append(panels, scores)
	}
	cpu, err := cpuPlot(rep)
	if err != nil {
		return err
	}
	if cpu != nil {
		panels = append(panels, cpu)
	}
	if len(panels) > 0 {
		grid := make([][]*plot.Plot, len(panels))
		for i, p := range panels {
			grid[i] = []*plot.Plot{p}
		}
		if err := savePlots(grid, 12*vg.Inch, vg.Length(len(panels))*6*vg.Inch, path); err != nil {
			return err
		}
	}
	if rep.Soak != nil && len(rep.Soak.Buckets) > 0 {
		ext := filepath.Ext(path)
		grid, err := soakPlots(rep.Soak)
		if err != nil {
			return err
		}
		return savePlots(grid, 12*vg.Inch, 12*vg.Inch, strings.TrimSuffix(path, ext)+"-soak"+ext)
	}
	return nil
}

// ratesPlot draws every throughput result as a horizontal bar, first at the
// top; nil when there is none.
func ratesPlot(rep *Report) (*plot.Plot, error) {
	var rs []Result
	maxRate := 0.0
	for _, r := range rep.Results {
		if r.ID != latencyFixedID && r.ID != resultRelayLatency && r.Rate > 0 {
			rs = append(rs, r)
			maxRate = max(maxRate, r.Rate)
		}
	}
	if len(rs) == 0 {
		return nil, nil
	}
	rc := newRowChart(fmt.Sprintf("Throughput, msg/s (blue: inbox; grey: ceilings and peers). %d messages of %d bytes, %d CPUs",
		rep.Options.Messages, rep.Options.Body, rep.Machine.CPUs), len(rs))
	for i, r := range rs {
		c := colorOther
		if isInbox(r.ID) {
			c = colorInbox
		}
		if _, err := addBar(rc.p, r.Rate, rc.y(i), c); err != nil {
			return nil, err
		}
		rc.row(i, chartLabel(rep, r), r.Rate, thousands(r.Rate))
	}
	return rc.done(maxRate*1.2, "messages per second")
}

// cpuPlot draws, for every result that measured it, the CPU a message took
// in the broker, the database and the bench's own process, stacked; nil
// when no result measured it.
func cpuPlot(rep *Report) (*plot.Plot, error) {
	var rs []Result
	most := 0.0
	for _, r := range rep.Results {
		if r.CPU != nil {
			rs = append(rs, r)
			most = max(most, r.CPU.BrokerMicros+r.CPU.DatabaseMicros+r.CPU.BenchMicros)
		}
	}
	if len(rs) == 0 {
		return nil, nil
	}
	rc := newRowChart("CPU per message, µs, by process (orange: broker; purple: database; grey: this process)", len(rs))
	for i, r := range rs {
		var below *plotter.BarChart
		for _, part := range []struct {
			v float64
			c color.Color
		}{{r.CPU.BrokerMicros, colorBroker}, {r.CPU.DatabaseMicros, colorDB}, {r.CPU.BenchMicros, colorOther}} {
			bar, err := addBar(rc.p, part.v, rc.y(i), part.c)
			if err != nil {
				return nil, err
			}
			if below != nil {
				bar.StackOn(below)
			}
			below = bar
		}
		total := r.CPU.BrokerMicros + r.CPU.DatabaseMicros + r.CPU.BenchMicros
		rc.row(i, chartLabel(rep, r), total, fmt.Sprintf("%.0f µs (%.0f + %.0f + %.0f), %.0f%% idle",
			total, r.CPU.BrokerMicros, r.CPU.DatabaseMicros, r.CPU.BenchMicros, r.CPU.IdlePercent))
	}
	return rc.done(most*1.6, "µs of CPU per message")
}

// scoresPlot draws every comparison as a bar of its result over its target
// (1 on the dashed line is the target: green met, red missed); ratios
// without a target are drawn as they are, in blue. nil when there is none.
func scoresPlot(comps []Comparison) (*plot.Plot, error) {
	if len(comps) == 0 {
		return nil, nil
	}
	rc := newRowChart("Result against target (dashed: target; green met, red missed, blue: ratio without a target)", len(comps))
	for i, c := range comps {
		score, col := c.Value, colorNeutral
		label := formatValue(c.Value, c.Unit)
		if c.Op != "" {
			score, col = c.score(), colorMissed
			if *c.Met {
				col = colorMet
			}
			label += fmt.Sprintf(" (target %s %s)", c.Op, formatValue(c.Target, c.Unit))
		}
		score = min(score, maxScore)
		if _, err := addBar(rc.p, score, rc.y(i), col); err != nil {
			return nil, err
		}
		rc.row(i, c.Name, score, label)
	}
	target, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(len(comps)) - 0.5}})
	if err != nil {
		return nil, err
	}
	target.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	rc.p.Add(target)
	return rc.done(maxScore*1.35, "result / target (ratio as is where there is no target), cut at 3")
}

// rowChart is a panel of horizontal bars, a row per item, the first at the
// top: each row has its name on the axis and a label at its bar's end.
type rowChart struct {
	p      *plot.Plot
	n      int
	names  []string
	labels plotter.XYLabels
}

func newRowChart(title string, n int) *rowChart {
	p := plot.New()
	p.Title.Text = title
	return &rowChart{p: p, n: n, names: make([]string, n),
		labels: plotter.XYLabels{XYs: make(plotter.XYs, n), Labels: make([]string, n)}}
}

// y is where row i is drawn.
func (rc *rowChart) y(i int) float64 { return float64(rc.n - 1 - i) }

// row names row i and puts label at x on it.
func (rc *rowChart) row(i int, name string, x float64, label string) {
	rc.names[rc.n-1-i] = name
	rc.labels.XYs[i] = plotter.XY{X: x, Y: rc.y(i)}
	rc.labels.Labels[i] = label
}

// done adds the labels and the row names, and sets the x axis from 0 to
// xMax.
func (rc *rowChart) done(xMax float64, xLabel string) (*plot.Plot, error) {
	if err := addLabels(rc.p, rc.labels); err != nil {
		return nil, err
	}
	rc.p.NominalY(rc.names...)
	rc.p.X.Min, rc.p.X.Max = 0, xMax
	rc.p.X.Label.Text = xLabel
	return rc.p, nil
}

// addBar adds a horizontal bar of length v at y and returns it (to stack
// another on).
func addBar(p *plot.Plot, v, y float64, c color.Color) (*plotter.BarChart, error) {
	bar, err := plotter.NewBarChart(plotter.Values{v}, vg.Points(11))
	if err != nil {
		return nil, err
	}
	bar.Horizontal, bar.XMin, bar.Color = true, y, c
	bar.LineStyle.Width = 0
	p.Add(bar)
	return bar, nil
}

func addLabels(p *plot.Plot, xyl plotter.XYLabels) error {
	l, err := plotter.NewLabels(xyl)
	if err != nil {
		return err
	}
	l.Offset = vg.Point{X: vg.Points(4), Y: -vg.Points(4)}
	p.Add(l)
	return nil
}

// soakPlots draws the soak's buckets as line charts, three rows of two.
func soakPlots(s *Soak) ([][]*plot.Plot, error) {
	type series struct {
		name string
		y    func(SoakBucket) float64
	}
	chart := func(title, unit string, ss ...series) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "minutes"
		p.Y.Label.Text = unit
		p.Y.Min = 0
		p.Legend.Top = true
		for i, se := range ss {
			xys := make(plotter.XYs, len(s.Buckets))
			for j, b := range s.Buckets {
				xys[j] = plotter.XY{X: b.EndSeconds / 60, Y: se.y(b)}
			}
			line, points, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			c := plotColor(i)
			line.Color, points.Color = c, c
			p.Add(line, points)
			p.Legend.Add(se.name, line, points)
		}
		return p, nil
	}
	specs := []func() (*plot.Plot, error){
		func() (*plot.Plot, error) {
			return chart("End-to-end latency", "ms",
				series{"p50", func(b SoakBucket) float64 { return b.P50Ms }},
				series{"p99", func(b SoakBucket) float64 { return b.P99Ms }})
		},
		func() (*plot.Plot, error) {
			return chart("Claim latency", "ms",
				series{"p50", func(b SoakBucket) float64 { return b.Claims.P50Ms }},
				series{"p99", func(b SoakBucket) float64 { return b.Claims.P99Ms }})
		},
		func() (*plot.Plot, error) {
			sizes := []series{
				{"inbox_messages", func(b SoakBucket) float64 { return b.MessagesTableMiB }},
				{"its indexes", func(b SoakBucket) float64 { return b.MessagesIndexesMiB }},
				{"inbox_streams", func(b SoakBucket) float64 { return b.StreamsMiB }},
			}
			if s.Outbox {
				sizes = append(sizes, series{"outbox_messages + indexes", func(b SoakBucket) float64 { return b.OutboxTableMiB + b.OutboxIndexesMiB }})
			}
			return chart("Table sizes", "MiB", sizes...)
		},
		func() (*plot.Plot, error) {
			rows := []series{
				{"rows", func(b SoakBucket) float64 { return float64(b.Rows) }},
				{"dead tuples", func(b SoakBucket) float64 { return float64(b.DeadTuples) }},
			}
			if s.Outbox {
				rows = append(rows, series{"outbox dead tuples", func(b SoakBucket) float64 { return float64(b.OutboxDeadTuples) }})
			}
			return chart("Rows and dead tuples", "rows", rows...)
		},
		func() (*plot.Plot, error) {
			return chart("Bench process memory", "MiB",
				series{"RSS", func(b SoakBucket) float64 { return b.RSSMiB }},
				series{"heap in use", func(b SoakBucket) float64 { return b.HeapInuseMiB }})
		},
		func() (*plot.Plot, error) {
			return chart(fmt.Sprintf("Handled, msg/s (offered %s)", thousands(s.OfferedRate)), "msg/s",
				series{"handled", func(b SoakBucket) float64 { return b.Rate }})
		},
	}
	grid := make([][]*plot.Plot, 3)
	for i, spec := range specs {
		p, err := spec()
		if err != nil {
			return nil, err
		}
		grid[i/2] = append(grid[i/2], p)
	}
	return grid, nil
}

func plotColor(i int) color.Color {
	palette := []color.Color{colorInbox, colorMissed, colorMet, colorBroker}
	return palette[i%len(palette)]
}

// savePlots draws grid, aligned, on one canvas of w by h and writes it to
// path in the format its extension names.
func savePlots(grid [][]*plot.Plot, w, h vg.Length, path string) error {
	c, err := draw.NewFormattedCanvas(w, h, strings.TrimPrefix(filepath.Ext(path), "."))
	if err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	cols := 0
	for _, row := range grid {
		cols = max(cols, len(row))
	}
	pad := vg.Points(12)
	tiles := draw.Tiles{Rows: len(grid), Cols: cols, PadTop: pad, PadBottom: pad, PadLeft: pad, PadRight: pad, PadX: pad, PadY: 2 * pad}
	canvases := plot.Align(grid, tiles, draw.New(c))
	for i, row := range grid {
		for j, p := range row {
			p.Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create chart %s: %w", path, err)
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write chart %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write chart %s: %w", path, err)
	}
	return nil
}

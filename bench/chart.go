package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strings"
)

// chartLabels are the short names of results in the chart, by result ID.
// Results without one (the fixed-rate latency run, whose rate is the offered
// load) are left out of the throughput panel.
var chartLabels = map[string]string{
	resultDBCeiling:       "DB ceiling: batched insert",
	resultBrokerCeiling:   "Broker ceiling: ack only",
	resultIngestInbox:     "Ingest: inbox receiver",
	resultIngestNaive:     "Ingest: naive consumer",
	resultProcessingInbox: "Process: inbox",
	resultProcessingRiver: "Process: River",
	resultOrderedInbox:    "Ordered: inbox, 1000 streams",
	latencySaturationID:   "End to end at saturation",
	resultScaleInbox:      "Scale: inbox, %s pending",
}

// chartLabel is the label of a result in the chart.
func chartLabel(rep *Report, id string) string {
	if id == resultScaleInbox {
		return fmt.Sprintf(chartLabels[id], shortCount(rep.Options.ScaleRows))
	}
	return chartLabels[id]
}

// Chart geometry, in pixels.
const (
	chartWidth   = 1300
	chartMargin  = 20
	chartLabelW  = 470 // label column
	chartBarW    = 480 // longest bar
	chartRowH    = 26
	chartBarH    = 18
	chartTitleH  = 40
	chartHeaderH = 34
	textScale    = 2
)

var (
	colorBackground = color.RGBA{255, 255, 255, 255}
	colorText       = color.RGBA{30, 30, 30, 255}
	colorMuted      = color.RGBA{110, 110, 110, 255}
	colorInbox      = color.RGBA{46, 110, 180, 255}
	colorOther      = color.RGBA{150, 150, 150, 255}
	colorMet        = color.RGBA{50, 150, 70, 255}
	colorMissed     = color.RGBA{200, 60, 50, 255}
	colorNeutral    = color.RGBA{120, 140, 170, 255}
	colorTarget     = color.RGBA{20, 20, 20, 255}
)

// writeChart draws two panels: every throughput result as a bar (the
// inbox's in blue, ceilings and peers in grey), then every comparison as a
// bar of result over target, with a line where the target lies.
func writeChart(rep *Report, path string) error {
	var rates []Result
	maxRate := 0.0
	for _, r := range rep.Results {
		if _, ok := chartLabels[r.ID]; ok && r.Rate > 0 {
			rates = append(rates, r)
			maxRate = max(maxRate, r.Rate)
		}
	}
	comps := rep.Comparisons
	// Scores are drawn up to 3 times the target; longer bars are cut, with
	// their value written beside them.
	const maxScore = 3.0

	height := chartMargin + chartTitleH + chartHeaderH + len(rates)*chartRowH +
		chartHeaderH + len(comps)*chartRowH + chartMargin
	img := image.NewRGBA(image.Rect(0, 0, chartWidth, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colorBackground}, image.Point{}, draw.Src)

	y := chartMargin
	drawText(img, chartMargin, y, fmt.Sprintf("inbox benchmark: %d messages of %d bytes, %d CPUs", rep.Options.Messages, rep.Options.Body, rep.Machine.CPUs), 3, colorText)
	y += chartTitleH

	drawText(img, chartMargin, y+8, "Throughput, messages per second (blue: inbox, grey: ceilings and peers)", textScale, colorMuted)
	y += chartHeaderH
	barX := chartMargin + chartLabelW
	for _, r := range rates {
		drawText(img, chartMargin, y+4, chartLabel(rep, r.ID), textScale, colorText)
		w := int(float64(chartBarW) * r.Rate / maxRate)
		c := colorOther
		if strings.HasSuffix(r.ID, "/inbox") || strings.HasPrefix(r.ID, "latency/") {
			c = colorInbox
		}
		fillRect(img, barX, y, w, chartBarH, c)
		drawText(img, barX+w+8, y+4, thousands(r.Rate), textScale, colorText)
		y += chartRowH
	}

	drawText(img, chartMargin, y+8, "Result against target (line: target, green met, red missed, blue no target)", textScale, colorMuted)
	y += chartHeaderH
	for _, c := range comps {
		drawText(img, chartMargin, y+4, c.Name, textScale, colorText)
		score, col := c.Value, colorNeutral
		if c.Op != "" {
			score, col = c.score(), colorMissed
			if *c.Met {
				col = colorMet
			}
		}
		w := int(float64(chartBarW) * min(score, maxScore) / maxScore)
		fillRect(img, barX, y, w, chartBarH, col)
		textX := barX + w + 8
		if c.Op != "" {
			x := barX + int(float64(chartBarW)/maxScore)
			fillRect(img, x-1, y-3, 3, chartBarH+6, colorTarget)
			textX = max(textX, x+8)
		}
		label := formatValue(c.Value, c.Unit)
		if c.Op != "" {
			label += fmt.Sprintf(" (target %s %s)", c.Op, formatValue(c.Target, c.Unit))
		}
		drawText(img, textX, y+4, label, textScale, colorText)
		y += chartRowH
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create chart %s: %w", path, err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("encode chart %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write chart %s: %w", path, err)
	}
	return nil
}

func fillRect(img *image.RGBA, x, y, w, h int, c color.Color) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}

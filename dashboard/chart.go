package dashboard

import (
	"fmt"
	"strings"
)

// chart is the overview's SVG: processed per minute as bars (left scale)
// and the sampled backlog as a line (right scale), oldest minute on the
// left. Geometry is computed here; the template only places it, so every
// value reaching the SVG is a number.
type chart struct {
	Width, Height       int
	Left, Right, Top    int
	Bottom              int
	Bars                []chartBar
	Line                string // polyline points
	Dots                []chartDot
	MaxRate, MaxBacklog int64
	Samples             int
	// Positions of the axes and labels.
	Base, End, LabelX, TopLabelY, RightLabelX, BottomLabelY int
}

type chartBar struct {
	X, Y, W, H float64
	Title      string
}

type chartDot struct {
	X, Y  float64
	Title string
}

func newChart(processed, backlog []int64, sampled []bool) chart {
	c := chart{Width: 720, Height: 200, Left: 48, Right: 56, Top: 10, Bottom: 22}
	c.Base, c.End = c.Height-c.Bottom, c.Width-c.Right
	c.LabelX, c.TopLabelY, c.RightLabelX, c.BottomLabelY = c.Left-6, c.Top+4, c.End+6, c.Height-6
	n := len(processed)
	plotW := float64(c.Width - c.Left - c.Right)
	plotH := float64(c.Height - c.Top - c.Bottom)
	for _, v := range processed {
		c.MaxRate = max(c.MaxRate, v)
	}
	for i, v := range backlog {
		if sampled[i] {
			c.MaxBacklog = max(c.MaxBacklog, v)
			c.Samples++
		}
	}
	rateScale, backlogScale := niceMax(c.MaxRate), niceMax(c.MaxBacklog)
	c.MaxRate, c.MaxBacklog = rateScale, backlogScale
	step := plotW / float64(n)
	var points []string
	for i := range n {
		ago := n - 1 - i // oldest on the left
		x := float64(c.Left) + float64(i)*step
		h := plotH * float64(processed[ago]) / float64(rateScale)
		c.Bars = append(c.Bars, chartBar{
			X: round1(x + 1), Y: round1(float64(c.Top) + plotH - h), W: round1(max(step-2, 1)), H: round1(h),
			Title: fmt.Sprintf("%d min ago: %d processed", ago, processed[ago]),
		})
		if ago < len(backlog) && sampled[ago] {
			y := float64(c.Top) + plotH - plotH*float64(backlog[ago])/float64(backlogScale)
			cx := x + step/2
			points = append(points, fmt.Sprintf("%.1f,%.1f", cx, y))
			c.Dots = append(c.Dots, chartDot{X: round1(cx), Y: round1(y), Title: fmt.Sprintf("%d min ago: %d pending", ago, backlog[ago])})
		}
	}
	c.Line = strings.Join(points, " ")
	return c
}

// niceMax rounds a scale's top up to 1, 2 or 5 times a power of ten.
func niceMax(v int64) int64 {
	if v <= 0 {
		return 1
	}
	for p := int64(1); ; p *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if m*p >= v {
				return m * p
			}
		}
	}
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

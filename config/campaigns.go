package config

import "time"

// Campaigns configures bulk sends, their approval and recurring schedules.
type Campaigns struct {
	// ApprovalAbove holds a request to more recipients than this for
	// approval, as a campaign (0: never).
	ApprovalAbove int `yaml:"approvalAbove"`
	// Step is about how often a running campaign fans out a step (its rate
	// is spread over the steps); 1s by default.
	Step time.Duration `yaml:"step"`
	// CatchUp is how late a recurring schedule still fires a run it missed
	// while no process ran; 1h by default.
	CatchUp time.Duration `yaml:"catchUp"`
	// MaxListBytes bounds a CSV list upload (1 GiB by default).
	MaxListBytes int64 `yaml:"maxListBytes"`
}

func (c *Campaigns) merge(f Campaigns) {
	if f.ApprovalAbove != 0 {
		c.ApprovalAbove = f.ApprovalAbove
	}
	if f.Step != 0 {
		c.Step = f.Step
	}
	if f.CatchUp != 0 {
		c.CatchUp = f.CatchUp
	}
	if f.MaxListBytes != 0 {
		c.MaxListBytes = f.MaxListBytes
	}
}

package schemas

// CampaignDecision is an approver's decision on a campaign.
type CampaignDecision struct {
	By       string `avro:"by" json:"by"`
	ByName   string `avro:"byName" json:"byName,omitempty"`
	Decision string `avro:"decision" json:"decision"`
	Comment  string `avro:"comment" json:"comment,omitempty"`
	At       int64  `avro:"at" json:"-"`
	// TemplateVersion and TemplateHash are the template version the decision
	// was about (since campaign.v2): an approval approves exactly it.
	TemplateVersion int64  `avro:"templateVersion" json:"templateVersion,omitempty"`
	TemplateHash    string `avro:"templateHash" json:"templateHash,omitempty"`
}

// Campaign is a bulk send to an audience (campaign.v1).
type Campaign struct {
	ID               string             `avro:"id"`
	Tenant           string             `avro:"tenant"`
	Name             string             `avro:"name"`
	Template         string             `avro:"template"`
	Data             string             `avro:"data"`
	Priority         string             `avro:"priority"`
	Category         string             `avro:"category"`
	Channels         []string           `avro:"channels"`
	AudienceKind     string             `avro:"audienceKind"`
	AudienceID       string             `avro:"audienceId"`
	Segment          string             `avro:"segment"`
	Users            []string           `avro:"users"`
	Rate             int32              `avro:"rate"`
	SendAt           int64              `avro:"sendAt"`
	ExpiresAt        int64              `avro:"expiresAt"`
	LocalTime        string             `avro:"localTime"`
	ApprovalDeadline int64              `avro:"approvalDeadline"`
	State            string             `avro:"state"`
	CreatedBy        string             `avro:"createdBy"`
	CreatedByName    string             `avro:"createdByName"`
	CreatedAt        int64              `avro:"createdAt"`
	Decisions        []CampaignDecision `avro:"decisions"`
	Cursor           string             `avro:"cursor"`
	Targeted         int64              `avro:"targeted"`
	Scanned          int64              `avro:"scanned"`
	StartedAt        int64              `avro:"startedAt"`
	FinishedAt       int64              `avro:"finishedAt"`
	LastTickAt       int64              `avro:"lastTickAt"`
	Reason           string             `avro:"reason"`
	UpdatedAt        int64              `avro:"updatedAt"`
	EventID          string             `avro:"eventId"`
	// StepOrigin names the tick that made the last fan-out step and StepFrom
	// the cursor before it: a replay of that tick redoes the step.
	StepOrigin string `avro:"stepOrigin"`
	StepFrom   string `avro:"stepFrom"`
	// TemplateVersion and TemplateHash pin the template version the campaign
	// sends (since campaign.v2): approval approves it, fan-out renders it.
	// TemplateSetBy is the key that chose it (the creator, or who re-pinned).
	TemplateVersion int64  `avro:"templateVersion"`
	TemplateHash    string `avro:"templateHash"`
	TemplateSetBy   string `avro:"templateSetBy"`
	// SealedData is Data sealed under the campaign's own data key (since
	// campaign.v2; Data is then empty): requests held for approval carry
	// their data here.
	SealedData []byte `avro:"sealedData"`
}

// CampaignCommand changes a campaign (on notify.campaigns).
type CampaignCommand struct {
	Op         string   `avro:"op"`
	Tenant     string   `avro:"tenant"`
	CampaignID string   `avro:"campaignId"`
	By         string   `avro:"by"`
	ByName     string   `avro:"byName"`
	Comment    string   `avro:"comment"`
	At         int64    `avro:"at"`
	Campaign   Campaign `avro:"campaign"`
	// TemplateVersion and TemplateHash: on approve, the version the approver
	// saw (0 and "": the campaign's); on OpTemplate, the version to pin.
	TemplateVersion int64  `avro:"templateVersion"`
	TemplateHash    string `avro:"templateHash"`
}

// AudienceMember is a user's membership of a topic or list.
type AudienceMember struct {
	Tenant     string `avro:"tenant"`
	Kind       string `avro:"kind"`
	AudienceID string `avro:"audienceId"`
	UserID     string `avro:"userId"`
	At         int64  `avro:"at"`
}

// Schedule is a recurring send (schedule.v1).
type Schedule struct {
	ID          string `avro:"id"`
	Tenant      string `avro:"tenant"`
	Cron        string `avro:"cron"`
	TimeZone    string `avro:"timeZone"`
	Request     []byte `avro:"request"`
	State       string `avro:"state"`
	CreatedBy   string `avro:"createdBy"`
	CreatedAt   int64  `avro:"createdAt"`
	NextAt      int64  `avro:"nextAt"`
	LastFiredAt int64  `avro:"lastFiredAt"`
	Fired       int64  `avro:"fired"`
	UpdatedAt   int64  `avro:"updatedAt"`
	// FireOrigin names the tick that fired last: its replay fires again.
	FireOrigin string `avro:"fireOrigin"`
}

// ScheduleCommand changes a schedule (on notify.schedules).
type ScheduleCommand struct {
	Op       string   `avro:"op"`
	By       string   `avro:"by"`
	At       int64    `avro:"at"`
	Schedule Schedule `avro:"schedule"`
}

// Cancellation stops a notification or a campaign before providers take it.
type Cancellation struct {
	Tenant         string `avro:"tenant"`
	NotificationID string `avro:"notificationId"`
	CampaignID     string `avro:"campaignId"`
	By             string `avro:"by"`
	At             int64  `avro:"at"`
}

// The codecs of the campaign records.
var (
	CampaignCodec        = NewCodec[Campaign]("notifyd.Campaign")
	CampaignCommandCodec = NewCodec[CampaignCommand]("notifyd.CampaignCommand")
	AudienceMemberCodec  = NewCodec[AudienceMember]("notifyd.AudienceMember")
	ScheduleCodec        = NewCodec[Schedule]("notifyd.Schedule")
	ScheduleCommandCodec = NewCodec[ScheduleCommand]("notifyd.ScheduleCommand")
	CancellationCodec    = NewCodec[Cancellation]("notifyd.Cancellation")
)

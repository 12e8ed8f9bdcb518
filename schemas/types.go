// Package schemas holds the Avro schemas of every record notifyd writes, the Go
// types they map to, and the codecs (single-object encoding, so a reader can
// decode what an older writer wrote).
package schemas

// Recipient is one addressee of a SendRequest, with optional inline contacts.
type Recipient struct {
	UserID string `avro:"userId" json:"userId"`
	Email  string `avro:"email" json:"email,omitempty"`
	Phone  string `avro:"phone" json:"phone,omitempty"`
	Locale string `avro:"locale" json:"locale,omitempty"`
	Upsert bool   `avro:"upsert" json:"upsert,omitempty"`
}

// SendRequest is what an upstream service asks for: one template, many recipients.
type SendRequest struct {
	EventID    string      `avro:"eventId"`
	Template   string      `avro:"template"`
	Recipients []Recipient `avro:"recipients"`
	Data       string      `avro:"data"` // JSON object
	Priority   string      `avro:"priority"`
	Category   string      `avro:"category"`
	Channels   []string    `avro:"channels"`
	SendAt     int64       `avro:"sendAt"`
	ExpiresAt  int64       `avro:"expiresAt"`
	AcceptedAt int64       `avro:"acceptedAt"`
	Source     string      `avro:"source"`
	OTP        bool        `avro:"otp"` // since send_request.v2
	// Tenant owns the record; "" is the default tenant (since send_request.v3).
	Tenant string `avro:"tenant"`
	// LocalTime "HH:MM" sends each notification at that time of its
	// recipient's day (since send_request.v4).
	LocalTime string `avro:"localTime"`
	// DigestKey groups events of a digest template (since send_request.v5;
	// "" is the template's one digest per user).
	DigestKey string `avro:"digestKey"`
	// ScheduleID names the recurring schedule that fired it (since v5).
	ScheduleID string `avro:"scheduleId"`
	// TemplateVersion and TemplateHash pin the template version the request
	// was accepted with (since send_request.v6; 0 and "": none pinned).
	TemplateVersion int64  `avro:"templateVersion"`
	TemplateHash    string `avro:"templateHash"`
}

// Content is a rendered message for one channel.
type Content struct {
	Subject  string `avro:"subject" json:"subject,omitempty"`
	HTML     string `avro:"html" json:"html,omitempty"`
	Text     string `avro:"text" json:"text,omitempty"`
	Title    string `avro:"title" json:"title,omitempty"`
	Body     string `avro:"body" json:"body,omitempty"`
	Endpoint string `avro:"endpoint" json:"endpoint,omitempty"`
	// Typed fields of push, chat and inbox content (since notification.v3 / template.v2).
	Markdown       string            `avro:"markdown" json:"markdown,omitempty"`
	ActionURL      string            `avro:"actionUrl" json:"actionUrl,omitempty"`
	ImageURL       string            `avro:"imageUrl" json:"imageUrl,omitempty"`
	Sound          string            `avro:"sound" json:"sound,omitempty"`
	Badge          int32             `avro:"badge" json:"badge,omitempty"`
	CollapseKey    string            `avro:"collapseKey" json:"collapseKey,omitempty"`
	Data           map[string]string `avro:"data" json:"data,omitempty"`
	TemplateID     string            `avro:"templateId" json:"templateId,omitempty"`
	TemplateParams map[string]string `avro:"templateParams" json:"templateParams,omitempty"`
}

// Notification is one recipient's share of a SendRequest. After routing it also
// carries the channel, the address and the rendered content.
type Notification struct {
	ID         string    `avro:"id"`
	EventID    string    `avro:"eventId"`
	UserID     string    `avro:"userId"`
	Template   string    `avro:"template"`
	Priority   string    `avro:"priority"`
	Category   string    `avro:"category"`
	Channels   []string  `avro:"channels"`
	Recipient  Recipient `avro:"recipient"`
	Data       string    `avro:"data"`
	SendAt     int64     `avro:"sendAt"`
	ExpiresAt  int64     `avro:"expiresAt"`
	AcceptedAt int64     `avro:"acceptedAt"`
	Channel    string    `avro:"channel"`
	Address    string    `avro:"address"`
	Locale     string    `avro:"locale"`
	Content    Content   `avro:"content"`
	RoutedAt   int64     `avro:"routedAt"`
	// Retry state (since notification.v2), carried through notify.retry.*.
	Attempts      int32  `avro:"attempts"`
	Retries       int32  `avro:"retries"`
	FirstFailedAt int64  `avro:"firstFailedAt"`
	RetryAt       int64  `avro:"retryAt"`
	LastError     string `avro:"lastError"`
	// Targets are every device or subscription of the user on a push or
	// webpush channel (since notification.v3); Address names the first.
	Targets []Target `avro:"targets"`
	// OTP marks a one-time code: high priority, never delayed by quiet hours,
	// never logged nor stored in analytics (since notification.v3).
	OTP bool `avro:"otp"`
	// Tenant owns the record; "" is the default tenant (since notification.v4).
	Tenant string `avro:"tenant"`
	// Sealed is the AES-GCM envelope of the whole record (since notification.v4);
	// when set, contacts, data, targets and content are empty in clear.
	Sealed []byte `avro:"sealed"`
	// LocalTime "HH:MM": held until that time in the recipient's time zone
	// (since notification.v5).
	LocalTime string `avro:"localTime"`
	// Campaign is the campaign that sent it (since notification.v6).
	Campaign string `avro:"campaign"`
	// DigestKey groups events of a digest template (since notification.v6).
	DigestKey string `avro:"digestKey"`
	// DigestFlush marks the release of a digest window (since notification.v6).
	DigestFlush bool `avro:"digestFlush"`
	// ScheduleID names the recurring schedule that fired it (since v6).
	ScheduleID string `avro:"scheduleId"`
	// TemplateVersion and TemplateHash pin the template version it was
	// accepted with (since notification.v7): delivery renders exactly that
	// version, or nothing.
	TemplateVersion int64  `avro:"templateVersion"`
	TemplateHash    string `avro:"templateHash"`
	// SealedData is a campaign's data sealed under the campaign's own key
	// (since notification.v7): the campaign group passes the campaign's
	// envelope on as it is, and the deliver group opens it (Data is empty).
	SealedData []byte `avro:"sealedData"`
}

// Target is one device or subscription a notification goes to.
type Target struct {
	Platform string `avro:"platform" json:"platform"`
	Token    string `avro:"token" json:"token,omitempty"`
	Endpoint string `avro:"endpoint" json:"endpoint,omitempty"`
	P256dh   string `avro:"p256dh" json:"p256dh,omitempty"`
	Auth     string `avro:"auth" json:"auth,omitempty"`
}

// Device is a push target of a profile.
type Device struct {
	Platform string `avro:"platform" json:"platform"`
	Token    string `avro:"token" json:"token,omitempty"`
	Endpoint string `avro:"endpoint" json:"endpoint,omitempty"`
	P256dh   string `avro:"p256dh" json:"p256dh,omitempty"`
	Auth     string `avro:"auth" json:"auth,omitempty"`
}

// Preferences are a user's opt-outs and quiet hours.
type Preferences struct {
	UnsubscribedAll bool                       `avro:"unsubscribedAll"`
	Categories      map[string]map[string]bool `avro:"categories"`
	QuietStart      string                     `avro:"quietStart"`
	QuietEnd        string                     `avro:"quietEnd"`
}

// Profile is what notifyd knows about a user.
type Profile struct {
	UserID      string                       `avro:"userId"`
	Email       string                       `avro:"email"`
	Phone       string                       `avro:"phone"`
	Locale      string                       `avro:"locale"`
	Timezone    string                       `avro:"timezone"`
	Devices     []Device                     `avro:"devices"`
	Chat        map[string]map[string]string `avro:"chat"`
	Preferences Preferences                  `avro:"preferences"`
	UpdatedAt   int64                        `avro:"updatedAt"`
	// Tenant owns the record; "" is the default tenant (since profile.v2).
	Tenant string `avro:"tenant"`
	// Sealed is the AES-GCM envelope of the whole profile (since profile.v2).
	Sealed []byte `avro:"sealed"`
	// Attributes are what segments select on (since profile.v3); they stay
	// readable, like locale and time zone.
	Attributes map[string]string `avro:"attributes"`
}

// ChannelContent is a template's unrendered content for one channel.
type ChannelContent struct {
	Subject  string `avro:"subject" json:"subject,omitempty"`
	HTML     string `avro:"html" json:"html,omitempty"`
	Text     string `avro:"text" json:"text,omitempty"`
	Title    string `avro:"title" json:"title,omitempty"`
	Body     string `avro:"body" json:"body,omitempty"`
	Endpoint string `avro:"endpoint" json:"endpoint,omitempty"`
	// Typed fields of push, chat and inbox content (since notification.v3 / template.v2).
	Markdown       string            `avro:"markdown" json:"markdown,omitempty"`
	ActionURL      string            `avro:"actionUrl" json:"actionUrl,omitempty"`
	ImageURL       string            `avro:"imageUrl" json:"imageUrl,omitempty"`
	Sound          string            `avro:"sound" json:"sound,omitempty"`
	Badge          int32             `avro:"badge" json:"badge,omitempty"`
	CollapseKey    string            `avro:"collapseKey" json:"collapseKey,omitempty"`
	Data           map[string]string `avro:"data" json:"data,omitempty"`
	TemplateID     string            `avro:"templateId" json:"templateId,omitempty"`
	TemplateParams map[string]string `avro:"templateParams" json:"templateParams,omitempty"`
}

// Template is a message template with per-channel and per-locale content.
type Template struct {
	ID        string                               `avro:"id"`
	Category  string                               `avro:"category"`
	Priority  string                               `avro:"priority"`
	Channels  map[string]ChannelContent            `avro:"channels"`
	Locales   map[string]map[string]ChannelContent `avro:"locales"`
	UpdatedAt int64                                `avro:"updatedAt"`
	// Tenant owns the record; "" is the default tenant (since template.v3).
	Tenant string `avro:"tenant"`
	// DigestWindowMs: events for a user within this window of the first are
	// sent as one digest (since template.v4; 0: no digest).
	DigestWindowMs int64 `avro:"digestWindowMs"`
	// DigestMax bounds the items a digest lists (0: DefaultDigestMax).
	DigestMax int32 `avro:"digestMax"`
	// Version is the version this content was saved as (since template.v5;
	// 0: saved before versions), Hash its content hash
	// (processors.TemplateHash), SavedBy and SavedByName the key that saved
	// it (UpdatedAt is when), RestoredFrom the version it restores.
	Version      int64  `avro:"version"`
	Hash         string `avro:"hash"`
	SavedBy      string `avro:"savedBy"`
	SavedByName  string `avro:"savedByName"`
	RestoredFrom int64  `avro:"restoredFrom"`
}

// StatusEvent is one state change of one notification.
type StatusEvent struct {
	ID                string `avro:"id"`
	NotificationID    string `avro:"notificationId"`
	EventID           string `avro:"eventId"`
	UserID            string `avro:"userId"`
	Template          string `avro:"template"`
	Channel           string `avro:"channel"`
	Priority          string `avro:"priority"`
	Category          string `avro:"category"`
	Provider          string `avro:"provider"`
	Status            string `avro:"status"`
	Reason            string `avro:"reason"`
	At                int64  `avro:"at"`
	AcceptedAt        int64  `avro:"acceptedAt"`
	Attempt           int32  `avro:"attempt"`
	ProviderMessageID string `avro:"providerMessageId"`
	// Tenant owns the record; "" is the default tenant (since status_event.v2).
	Tenant string `avro:"tenant"`
	// Campaign is the notification's campaign (since status_event.v3).
	Campaign string `avro:"campaign"`
	// TemplateVersion is the template version it renders (since v4; 0: not known yet).
	TemplateVersion int64 `avro:"templateVersion"`
	// QueuedAt is when the deliver group routed the notification to Channel
	// (since v5; 0: not stated). A sink's events carry it: the queued state is
	// recorded from it (processors.ImpliedQueued), not from an event of its own.
	QueuedAt int64 `avro:"queuedAt"`
}

// DedupEntry records when an eventId was first seen.
type DedupEntry struct {
	FirstSeen int64 `avro:"firstSeen"`
	// Origin names the ingest record that created the entry (since v2).
	Origin string `avro:"origin"`
}

// RecentContent is the hash of content recently sent to a user.
type RecentContent struct {
	Hash           string `avro:"hash"`
	At             int64  `avro:"at"`
	NotificationID string `avro:"notificationId"` // since user_state.v2
	Channel        string `avro:"channel"`        // since user_state.v3
}

// UserState is the deliver group's per-user state.
type UserState struct {
	Day       string           `avro:"day"`
	SentToday map[string]int32 `avro:"sentToday"`
	Recent    []RecentContent  `avro:"recent"`
	// Digests are the user's open digest windows (since user_state.v4).
	Digests []Digest `avro:"digests"`
}

// Digest collects the events of one digest key of a user until DueAt.
type Digest struct {
	Key            string   `avro:"key"`
	Template       string   `avro:"template"`
	NotificationID string   `avro:"notificationId"` // the digest's own notification
	FirstAt        int64    `avro:"firstAt"`
	DueAt          int64    `avro:"dueAt"`
	Count          int32    `avro:"count"`
	Items          []string `avro:"items"`    // each event's data (JSON), up to the template's DigestMax
	EventIDs       []string `avro:"eventIds"` // the events collected, for idempotent replays
	// Sealed is the AES-GCM envelope of Items when the deliver group seals.
	Sealed []byte `avro:"sealed"`
}

// HistoryEntry is one line of a notification's history.
type HistoryEntry struct {
	Status   string `avro:"status"`
	At       int64  `avro:"at"`
	Reason   string `avro:"reason"`
	Channel  string `avro:"channel"`
	Provider string `avro:"provider"`
	EventID  string `avro:"id"` // the status event's id (since lifecycle.v2)
}

// Lifecycle is the status group's view of one notification.
type Lifecycle struct {
	ID             string            `avro:"id"`
	EventID        string            `avro:"eventId"`
	UserID         string            `avro:"userId"`
	Template       string            `avro:"template"`
	Priority       string            `avro:"priority"`
	Category       string            `avro:"category"`
	Channel        string            `avro:"channel"`
	Provider       string            `avro:"provider"`
	Status         string            `avro:"status"`
	Channels       map[string]string `avro:"channels"`
	History        []HistoryEntry    `avro:"history"`
	DroppedHistory int32             `avro:"droppedHistory"`
	// Tenant owns the record; "" is the default tenant (since lifecycle.v3).
	Tenant string `avro:"tenant"`
	// Campaign is the notification's campaign (since lifecycle.v4).
	Campaign string `avro:"campaign"`
	// TemplateVersion is the template version it renders (since lifecycle.v5).
	TemplateVersion int64 `avro:"templateVersion"`
}

// DeadLetter is a record that could not be processed, with its reason.
type DeadLetter struct {
	Topic     string `avro:"topic"`
	Partition int32  `avro:"partition"`
	Offset    int64  `avro:"offset"`
	Key       []byte `avro:"key"`
	Value     []byte `avro:"value"`
	Reason    string `avro:"reason"`
	Stage     string `avro:"stage"`
	At        int64  `avro:"at"`
	// NotificationID is the notification the record carried (since v2).
	NotificationID string `avro:"notificationId"`
	// Truncated: Value holds only the first bytes of the record (since v2).
	Truncated bool `avro:"truncated"`
}

// ScheduledEntry is a notification the scheduler group holds until due.
type ScheduledEntry struct {
	Notification []byte `avro:"notification"` // single-object encoded Notification
	ReleasedBy   string `avro:"releasedBy"`
	ReleasedAt   int64  `avro:"releasedAt"`
}

// DeliveryFeedback tells the deliver group that a routed notification was not
// accepted by a provider, so its content hash is forgotten.
type DeliveryFeedback struct {
	NotificationID string `avro:"notificationId"`
	Channel        string `avro:"channel"`
	Status         string `avro:"status"`
	At             int64  `avro:"at"`
	// Invalid are targets a provider declared invalid: the deliver group
	// removes them from the profile (since delivery_feedback.v2).
	Invalid []InvalidTarget `avro:"invalid"`
	// Unsubscribe: the recipient asked the provider to stop (SMS STOP): the
	// deliver group opts the profile out of the channel.
	Unsubscribe bool `avro:"unsubscribe"`
	// Moved are addresses the provider says moved (since delivery_feedback.v2).
	Moved  []MovedTarget `avro:"moved"`
	Reason string        `avro:"reason"`
	// Sealed is the AES-GCM envelope of Invalid, Moved and Reason (since
	// delivery_feedback.v3).
	Sealed []byte `avro:"sealed"` // UnsubscribeCategory, with Unsubscribe, opts out of this category only
	// (since delivery_feedback.v4).
	UnsubscribeCategory string `avro:"unsubscribeCategory"`
}

// MovedTarget is an address that moved: the profile's From becomes To.
type MovedTarget struct {
	Platform string `avro:"platform"`
	From     string `avro:"from"`
	To       string `avro:"to"`
}

// InvalidTarget names a device, subscription, chat or number to remove.
type InvalidTarget struct {
	Platform string `avro:"platform"`
	Token    string `avro:"token"`
	Endpoint string `avro:"endpoint"`
}

// LedgerEntry records a delivery handed to a provider.
type LedgerEntry struct {
	NotificationID string `avro:"notificationId"`
	Channel        string `avro:"channel"`
	Provider       string `avro:"provider"`
	Topic          string `avro:"topic"`
	Partition      int32  `avro:"partition"`
	Offset         int64  `avro:"offset"`
	At             int64  `avro:"at"`
}

// InboxItem is one message of a user's in-app inbox.
type InboxItem struct {
	ID        string            `avro:"id" json:"id"`
	Template  string            `avro:"template" json:"template,omitempty"`
	Category  string            `avro:"category" json:"category,omitempty"`
	Title     string            `avro:"title" json:"title,omitempty"`
	Body      string            `avro:"body" json:"body,omitempty"`
	ActionURL string            `avro:"actionUrl" json:"actionUrl,omitempty"`
	Avatar    string            `avro:"avatar" json:"avatar,omitempty"`
	Data      map[string]string `avro:"data" json:"data,omitempty"`
	CreatedAt int64             `avro:"createdAt" json:"-"`
	Seq       int64             `avro:"seq" json:"seq"`
	Seen      bool              `avro:"seen" json:"seen"`
	Read      bool              `avro:"read" json:"read"`
	Archived  bool              `avro:"archived" json:"archived"`
	// Sealed is the AES-GCM envelope of the item's content (since inbox_*.v2).
	Sealed []byte `avro:"sealed" json:"-"`
}

// InboxCommand changes a user's inbox (on notify.inbox, key userId).
type InboxCommand struct {
	Op         string    `avro:"op"`
	UserID     string    `avro:"userId"`
	MessageIDs []string  `avro:"messageIds"`
	At         int64     `avro:"at"`
	Message    InboxItem `avro:"message"`
	// Tenant owns the record; "" is the default tenant (since inbox_command.v2).
	Tenant string `avro:"tenant"`
}

// InboxFeed is the inbox group's value of a user: newest messages first.
type InboxFeed struct {
	Messages []InboxItem `avro:"messages"`
	Seq      int64       `avro:"seq"`
	Unread   int32       `avro:"unread"`
	Unseen   int32       `avro:"unseen"`
	// Recalled are ids of recalled messages (since inbox_feed.v3): a late add
	// of one is ignored.
	Recalled []string `avro:"recalled"`
}

// InboxEvent tells the API instances what changed in a user's inbox.
type InboxEvent struct {
	UserID string      `avro:"userId"`
	Seq    int64       `avro:"seq"`
	Kind   string      `avro:"kind"`
	Items  []InboxItem `avro:"items"`
	Unread int32       `avro:"unread"`
	Unseen int32       `avro:"unseen"`
	At     int64       `avro:"at"`
}

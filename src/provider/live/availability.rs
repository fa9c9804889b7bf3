//! When an agent can take a chat: the schedule math of Zendesk business
//! hours (weekly intervals in the schedule's time zone) and the reading of
//! Zendesk's agent-availability answer. Pure functions, so that a fixed
//! clock tests them; the HTTP calls are in [`super::zendesk`].
use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

/// Minutes in a week; schedule intervals count from Sunday 00:00.
const WEEK_MINUTES: u32 = 7 * 24 * 60;

/// One open interval of a schedule, in minutes from Sunday 00:00 local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Interval {
    pub start_time: u32,
    pub end_time: u32,
}

/// `GET /api/v2/business_hours/schedules/{id}`.
#[derive(Debug, Deserialize)]
pub struct ScheduleEnvelope {
    pub schedule: Schedule,
}

#[derive(Debug, Deserialize)]
pub struct Schedule {
    #[serde(default)]
    pub id: Option<u64>,
    pub time_zone: String,
    #[serde(default)]
    pub intervals: Vec<Interval>,
}

/// Whether `now` falls in one of the weekly `intervals` (start inclusive,
/// end exclusive) in time zone `tz`. An interval that runs past the end of
/// the week (Saturday night into Sunday) wraps around.
pub fn is_open(intervals: &[Interval], tz: Tz, now: DateTime<Utc>) -> bool {
    let local = now.with_timezone(&tz);
    let minute =
        local.weekday().num_days_from_sunday() * 24 * 60 + local.hour() * 60 + local.minute();
    intervals.iter().any(|i| {
        let inside = |m: u32| i.start_time <= m && m < i.end_time;
        inside(minute) || inside(minute + WEEK_MINUTES)
    })
}

/// The time zone of a Zendesk schedule: a Rails (ActiveSupport) name such
/// as "Pacific Time (US & Canada)", or an IANA name.
pub fn time_zone(name: &str) -> Option<Tz> {
    let name = name.trim();
    if let Some((_, iana)) = RAILS_ZONES
        .iter()
        .find(|(rails, _)| rails.eq_ignore_ascii_case(name))
    {
        return iana.parse().ok();
    }
    name.parse().ok()
}

/// ActiveSupport::TimeZone::MAPPING: the names Zendesk gives schedules.
pub const RAILS_ZONES: &[(&str, &str)] = &[
    ("International Date Line West", "Etc/GMT+12"),
    ("Midway Island", "Pacific/Midway"),
    ("American Samoa", "Pacific/Pago_Pago"),
    ("Hawaii", "Pacific/Honolulu"),
    ("Alaska", "America/Juneau"),
    ("Pacific Time (US & Canada)", "America/Los_Angeles"),
    ("Tijuana", "America/Tijuana"),
    ("Mountain Time (US & Canada)", "America/Denver"),
    ("Arizona", "America/Phoenix"),
    ("Chihuahua", "America/Chihuahua"),
    ("Mazatlan", "America/Mazatlan"),
    ("Central Time (US & Canada)", "America/Chicago"),
    ("Saskatchewan", "America/Regina"),
    ("Guadalajara", "America/Mexico_City"),
    ("Mexico City", "America/Mexico_City"),
    ("Monterrey", "America/Monterrey"),
    ("Central America", "America/Guatemala"),
    ("Eastern Time (US & Canada)", "America/New_York"),
    ("Indiana (East)", "America/Indiana/Indianapolis"),
    ("Bogota", "America/Bogota"),
    ("Lima", "America/Lima"),
    ("Quito", "America/Lima"),
    ("Atlantic Time (Canada)", "America/Halifax"),
    ("Caracas", "America/Caracas"),
    ("La Paz", "America/La_Paz"),
    ("Santiago", "America/Santiago"),
    ("Newfoundland", "America/St_Johns"),
    ("Brasilia", "America/Sao_Paulo"),
    ("Buenos Aires", "America/Argentina/Buenos_Aires"),
    ("Montevideo", "America/Montevideo"),
    ("Georgetown", "America/Guyana"),
    ("Puerto Rico", "America/Puerto_Rico"),
    ("Greenland", "America/Godthab"),
    ("Mid-Atlantic", "Atlantic/South_Georgia"),
    ("Azores", "Atlantic/Azores"),
    ("Cape Verde Is.", "Atlantic/Cape_Verde"),
    ("Dublin", "Europe/Dublin"),
    ("Edinburgh", "Europe/London"),
    ("Lisbon", "Europe/Lisbon"),
    ("London", "Europe/London"),
    ("Casablanca", "Africa/Casablanca"),
    ("Monrovia", "Africa/Monrovia"),
    ("UTC", "Etc/UTC"),
    ("Belgrade", "Europe/Belgrade"),
    ("Bratislava", "Europe/Bratislava"),
    ("Budapest", "Europe/Budapest"),
    ("Ljubljana", "Europe/Ljubljana"),
    ("Prague", "Europe/Prague"),
    ("Sarajevo", "Europe/Sarajevo"),
    ("Skopje", "Europe/Skopje"),
    ("Warsaw", "Europe/Warsaw"),
    ("Zagreb", "Europe/Zagreb"),
    ("Brussels", "Europe/Brussels"),
    ("Copenhagen", "Europe/Copenhagen"),
    ("Madrid", "Europe/Madrid"),
    ("Paris", "Europe/Paris"),
    ("Amsterdam", "Europe/Amsterdam"),
    ("Berlin", "Europe/Berlin"),
    ("Bern", "Europe/Zurich"),
    ("Zurich", "Europe/Zurich"),
    ("Rome", "Europe/Rome"),
    ("Stockholm", "Europe/Stockholm"),
    ("Vienna", "Europe/Vienna"),
    ("West Central Africa", "Africa/Algiers"),
    ("Bucharest", "Europe/Bucharest"),
    ("Cairo", "Africa/Cairo"),
    ("Helsinki", "Europe/Helsinki"),
    ("Kyiv", "Europe/Kiev"),
    ("Kyev", "Europe/Kiev"),
    ("Riga", "Europe/Riga"),
    ("Sofia", "Europe/Sofia"),
    ("Tallinn", "Europe/Tallinn"),
    ("Vilnius", "Europe/Vilnius"),
    ("Athens", "Europe/Athens"),
    ("Istanbul", "Europe/Istanbul"),
    ("Minsk", "Europe/Minsk"),
    ("Jerusalem", "Asia/Jerusalem"),
    ("Harare", "Africa/Harare"),
    ("Pretoria", "Africa/Johannesburg"),
    ("Kaliningrad", "Europe/Kaliningrad"),
    ("Moscow", "Europe/Moscow"),
    ("St. Petersburg", "Europe/Moscow"),
    ("Volgograd", "Europe/Volgograd"),
    ("Samara", "Europe/Samara"),
    ("Kuwait", "Asia/Kuwait"),
    ("Riyadh", "Asia/Riyadh"),
    ("Nairobi", "Africa/Nairobi"),
    ("Baghdad", "Asia/Baghdad"),
    ("Tehran", "Asia/Tehran"),
    ("Abu Dhabi", "Asia/Muscat"),
    ("Muscat", "Asia/Muscat"),
    ("Baku", "Asia/Baku"),
    ("Tbilisi", "Asia/Tbilisi"),
    ("Yerevan", "Asia/Yerevan"),
    ("Kabul", "Asia/Kabul"),
    ("Ekaterinburg", "Asia/Yekaterinburg"),
    ("Islamabad", "Asia/Karachi"),
    ("Karachi", "Asia/Karachi"),
    ("Tashkent", "Asia/Tashkent"),
    ("Chennai", "Asia/Kolkata"),
    ("Kolkata", "Asia/Kolkata"),
    ("Mumbai", "Asia/Kolkata"),
    ("New Delhi", "Asia/Kolkata"),
    ("Kathmandu", "Asia/Kathmandu"),
    ("Astana", "Asia/Dhaka"),
    ("Dhaka", "Asia/Dhaka"),
    ("Sri Jayawardenepura", "Asia/Colombo"),
    ("Almaty", "Asia/Almaty"),
    ("Novosibirsk", "Asia/Novosibirsk"),
    ("Rangoon", "Asia/Rangoon"),
    ("Bangkok", "Asia/Bangkok"),
    ("Hanoi", "Asia/Bangkok"),
    ("Jakarta", "Asia/Jakarta"),
    ("Krasnoyarsk", "Asia/Krasnoyarsk"),
    ("Beijing", "Asia/Shanghai"),
    ("Chongqing", "Asia/Chongqing"),
    ("Hong Kong", "Asia/Hong_Kong"),
    ("Urumqi", "Asia/Urumqi"),
    ("Kuala Lumpur", "Asia/Kuala_Lumpur"),
    ("Singapore", "Asia/Singapore"),
    ("Taipei", "Asia/Taipei"),
    ("Perth", "Australia/Perth"),
    ("Irkutsk", "Asia/Irkutsk"),
    ("Ulaanbaatar", "Asia/Ulaanbaatar"),
    ("Seoul", "Asia/Seoul"),
    ("Osaka", "Asia/Tokyo"),
    ("Sapporo", "Asia/Tokyo"),
    ("Tokyo", "Asia/Tokyo"),
    ("Yakutsk", "Asia/Yakutsk"),
    ("Darwin", "Australia/Darwin"),
    ("Adelaide", "Australia/Adelaide"),
    ("Canberra", "Australia/Melbourne"),
    ("Melbourne", "Australia/Melbourne"),
    ("Sydney", "Australia/Sydney"),
    ("Brisbane", "Australia/Brisbane"),
    ("Hobart", "Australia/Hobart"),
    ("Vladivostok", "Asia/Vladivostok"),
    ("Guam", "Pacific/Guam"),
    ("Port Moresby", "Pacific/Port_Moresby"),
    ("Magadan", "Asia/Magadan"),
    ("Srednekolymsk", "Asia/Srednekolymsk"),
    ("Solomon Is.", "Pacific/Guadalcanal"),
    ("New Caledonia", "Pacific/Noumea"),
    ("Fiji", "Pacific/Fiji"),
    ("Kamchatka", "Asia/Kamchatka"),
    ("Marshall Is.", "Pacific/Majuro"),
    ("Auckland", "Pacific/Auckland"),
    ("Wellington", "Pacific/Auckland"),
    ("Nuku'alofa", "Pacific/Tongatapu"),
    ("Tokelau Is.", "Pacific/Fakaofo"),
    ("Chatham Is.", "Pacific/Chatham"),
    ("Samoa", "Pacific/Apia"),
];

/// `GET /api/v2/agent_availabilities?filter[channel_status]=messaging:online`.
#[derive(Debug, Deserialize)]
pub struct AgentAvailabilities {
    #[serde(default)]
    pub data: Vec<serde_json::Value>,
    #[serde(default)]
    pub included: Option<Vec<IncludedChannel>>,
}

#[derive(Debug, Deserialize)]
pub struct IncludedChannel {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub attributes: ChannelAttributes,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelAttributes {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// Whether an agent is online for messaging: an included channel named
/// messaging is online, or (an answer without `included`) the filtered list
/// of agents is not empty.
pub fn agent_online(answer: &AgentAvailabilities) -> bool {
    match &answer.included {
        Some(channels) => channels.iter().any(|c| {
            c.kind.as_deref().is_none_or(|k| k == "channels")
                && c.attributes.name.as_deref() == Some("messaging")
                && c.attributes.status.as_deref() == Some("online")
        }),
        None => !answer.data.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Monday to Friday 09:00-17:00.
    fn office_hours() -> Vec<Interval> {
        (1..=5)
            .map(|d| Interval {
                start_time: d * 1440 + 9 * 60,
                end_time: d * 1440 + 17 * 60,
            })
            .collect()
    }

    #[test]
    fn rails_and_iana_names_resolve() {
        assert_eq!(
            time_zone("Pacific Time (US & Canada)"),
            Some(chrono_tz::America::Los_Angeles)
        );
        assert_eq!(time_zone("Copenhagen"), Some(chrono_tz::Europe::Copenhagen));
        assert_eq!(
            time_zone("Eastern Time (US & Canada)"),
            Some(chrono_tz::America::New_York)
        );
        assert_eq!(time_zone("UTC"), Some(chrono_tz::Etc::UTC));
        assert_eq!(time_zone("Sydney"), Some(chrono_tz::Australia::Sydney));
        assert_eq!(time_zone("Europe/Berlin"), Some(chrono_tz::Europe::Berlin));
        assert_eq!(time_zone("Atlantis Standard"), None);
        for (rails, iana) in RAILS_ZONES {
            assert!(
                iana.parse::<Tz>().is_ok(),
                "{rails} -> {iana} is not a chrono-tz zone"
            );
        }
    }

    #[test]
    fn a_schedule_is_open_in_its_own_time_zone() {
        let tz = time_zone("Pacific Time (US & Canada)").unwrap();
        // Wednesday 2026-01-07 16:30 UTC = 08:30 PST: not yet open.
        assert!(!is_open(&office_hours(), tz, at("2026-01-07T16:30:00Z")));
        // 17:00 UTC = 09:00 PST: open (start inclusive).
        assert!(is_open(&office_hours(), tz, at("2026-01-07T17:00:00Z")));
        // Thursday 01:00 UTC = Wednesday 17:00 PST: closed (end exclusive).
        assert!(!is_open(&office_hours(), tz, at("2026-01-08T01:00:00Z")));
        // The same instant is open in UTC's own office hours? Thursday 01:00 UTC: no.
        assert!(!is_open(
            &office_hours(),
            chrono_tz::Etc::UTC,
            at("2026-01-08T01:00:00Z")
        ));
        // Saturday is closed.
        assert!(!is_open(&office_hours(), tz, at("2026-01-10T20:00:00Z")));
    }

    #[test]
    fn summer_time_moves_the_window() {
        let tz = time_zone("Copenhagen").unwrap();
        // Monday 2026-07-06 07:30 UTC = 09:30 CEST: open.
        assert!(is_open(&office_hours(), tz, at("2026-07-06T07:30:00Z")));
        // Monday 2026-01-05 07:30 UTC = 08:30 CET: closed.
        assert!(!is_open(&office_hours(), tz, at("2026-01-05T07:30:00Z")));
    }

    #[test]
    fn an_interval_past_the_week_end_wraps_to_sunday() {
        // Saturday 22:00 to Sunday 02:00.
        let late = [Interval {
            start_time: 6 * 1440 + 22 * 60,
            end_time: 7 * 1440 + 2 * 60,
        }];
        // Sunday 2026-01-04 01:00 UTC.
        assert!(is_open(
            &late,
            chrono_tz::Etc::UTC,
            at("2026-01-04T01:00:00Z")
        ));
        assert!(!is_open(
            &late,
            chrono_tz::Etc::UTC,
            at("2026-01-04T03:00:00Z")
        ));
        assert!(!is_open(
            &[],
            chrono_tz::Etc::UTC,
            at("2026-01-04T03:00:00Z")
        ));
    }

    #[test]
    fn agents_online_reads_the_included_channels() {
        let online: AgentAvailabilities = serde_json::from_str(r#"{"data":[{"id":"1","type":"agent_availabilities","attributes":{"agent_id":1,"agent_status":{"id":1,"name":"online"}},"relationships":{"channels":{"data":[{"id":"1_messaging","type":"channels"}]}}}],"included":[{"id":"1_messaging","type":"channels","attributes":{"name":"messaging","status":"online"}}],"meta":{"has_more":false}}"#).unwrap();
        assert!(agent_online(&online));
        let away: AgentAvailabilities = serde_json::from_str(r#"{"data":[{"id":"1"}],"included":[{"id":"1_messaging","type":"channels","attributes":{"name":"messaging","status":"away"}}]}"#).unwrap();
        assert!(!agent_online(&away));
        let none: AgentAvailabilities =
            serde_json::from_str(r#"{"data":[],"included":[],"meta":{"has_more":false}}"#).unwrap();
        assert!(!agent_online(&none));
        let bare: AgentAvailabilities = serde_json::from_str(r#"{"data":[{"id":"1"}]}"#).unwrap();
        assert!(agent_online(&bare));
    }
}

"""Real-shaped values a tool receives: ids, names, emails, order refs, free text.

Used to measure `NotPlaceholder`'s false-positive rate (docs/validation.md quotes it). Shapes
taken from common systems (Stripe, Shopify, Zendesk, Salesforce, UUIDs, ULIDs, ISO
references) and names from many languages, including ones that look like English words.
"""

from __future__ import annotations

IDS = [
    "u_123", "usr_8f3k2j", "cus_NffrFeUfNV2Hib", "acct_1032D82eZvKYlo2C", "pi_3MtwBwLkdIwHu7ix",
    "ch_3LmK2a2eZvKYlo2C1bW0", "sub_1MowQVLkdIwHu7ixeRlqHVzs", "in_1MtHbELkdIwHu7ixl4OzzPMv",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "9b2d8f0e-7c1a-4e5b-8a3d-2f6e1c0b9a47",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV", "01HGW2N7EHJVJ4CJ999RRS2E97", "0031U00001WaiGcQAJ",
    "5003000000D8cuI", "a0B5e000002XyZqEAK", "12345", "987654321", "42", "7", "100200300",
    "user-42", "user_00017", "USR-2024-000871", "emp-4471", "E1029", "CUST-88213",
    "C-001-442", "acc-99a1b2", "tenant_7f3a", "org_2ZxY9aBc", "ws_T01ABCDEF", "U024BE7LH",
    "T12345678", "gid://shopify/Customer/7046452101", "gid://shopify/Order/450789469",
    "zd-ticket-88123", "INC0012345", "CS0001042", "JIRA-4412", "PROJ-128", "SUP-90211",
    "5f8d0d55b54764421b7156c9", "64b7f3e2a1c9d8e7f6a5b4c3", "ABC123", "XJ9-22K", "k3j4h5g6",
    "a1b2c3d4e5f6", "0x7f3a9c", "sha256:9f86d081884c7d65", "v2.3.1", "2024-Q3-77",
]  # fmt: skip

NAMES = [
    "Ann Smith", "José García", "Zoë Müller", "Nguyễn Văn An", "Li Wei", "Wang Fang",
    "Aiko Tanaka", "Hiroshi Yamamoto", "Olga Ivanova", "Dmitri Petrov", "Fatima Al-Sayed",
    "Mohammed bin Rashid", "Aarav Sharma", "Priya Patel", "Chidi Okafor", "Ngozi Adeyemi",
    "Kwame Mensah", "Sione Tupou", "Mateo Rossi", "Giulia Bianchi", "Seo-yeon Kim",
    "Na Young-ho", "Jean-Luc Picard", "Marie-Claire Dubois", "Søren Kierkegaard",
    "Björk Guðmundsdóttir", "Łukasz Nowak", "Ágnes Kovács", "Ioana Popescu", "Mehmet Yılmaz",  # noqa: RUF001
    "Avi Cohen", "Noa Levi", "Sean O'Brien", "Siobhán Ní Bhriain", "Hope Will", "Will Smith",
    "May Chen", "April Jones", "June Park", "Summer Lee", "Grace Hopper", "Faith Evans",
    "Joy Division Ltd", "Sunny Day Café", "Unknown Pleasures Records", "The Same Old Shop",
    "Mark Previous", "Eve Last", "Tbd Holdings", "Null Island Tours", "Dr. Ada Lovelace",
    "Prof. Alan Turing", "Mr. Bean", "Ms. Rosa Parks", "O'Neil Jr.", "van der Berg", "de la Cruz",
    "Acme Corp", "Globex Corporation", "Initech", "Umbrella Pharma GmbH", "Stark Industries",
]  # fmt: skip

EMAILS = [
    "ann@example.org", "jose.garcia@empresa.es", "zoe.mueller@firma.de", "li.wei@company.cn",
    "a.tanaka@kaisha.co.jp", "olga@mail.ru", "fatima.alsayed@company.ae", "priya+billing@acme.io",
    "chidi_okafor@lagos.ng", "support@shop.com", "noreply@notifications.github.com",
    "first.last@sub.domain.co.uk", "x@y.io", "jean-luc@starfleet.fr", "ops-team@corp.internal.net",
    "sales@globex.com", "billing@stark-industries.com", "user1234@gmail.com",
    "his.email@gmail.com", "unknown.pleasures@records.co", "same.day@delivery.com",
    "tbd@holdings.com", "hope.will@outlook.com", "may.chen@yahoo.com", "info@sunnyday.cafe",
    "müller@beispiel.de", "δοκιμή@παράδειγμα.δοκιμή", "admin@xn--80ak6aa92e.com",
    "dr.lovelace@analytical.engine.org", "a.b.c.d@e.f.gh", "customer.service@bank.com",
    "previous.owner@realty.com", "last.call@bar.pub", "the.user@example.com",
    "o'brien@irish.ie", "ngozi.adeyemi@uni.edu.ng", "seo-yeon.kim@company.kr",
    "mehmet.yilmaz@sirket.com.tr", "avi@startup.co.il", "kwame@ghana.gh", "sione@tonga.to",
    "giulia.bianchi@azienda.it", "lukasz.nowak@firma.pl", "agnes@ceg.hu", "ioana@firma.ro",
    "soren@kierkegaard.dk", "bjork@music.is", "mateo.rossi@azienda.it", "wang.fang@qq.com",
    "hiroshi@yamamoto.jp",
]  # fmt: skip

ORDER_REFS = [
    "ORD-2026-0042", "#1001", "#A1234", "PO-88213", "PO 4500012345", "INV-2024-00017",
    "SO-000123", "1Z999AA10123456784", "9400111899223197428490", "TBA123456789012",
    "LP00123456789012", "RMA-7781", "RET-2026-114", "QUOTE-88-A", "CART-7f3a9c",
    "order_8sKd92", "ord_1MowQVLkdIwHu7ix", "450789469", "1002-33", "A-2024-11-07-0001",
    "BK-ZX81", "PNR QX7T2M", "HX4JQ2", "ref: 88213", "Invoice 2024/117", "WO-17-221",
    "SHIP-DE-000443", "ASN-551290", "DO-99812", "GRN-2024-06-001", "CN-ABC-7731",
    "MO-00042", "TKT-1180", "CASE-00091337", "REQ-2024-000451", "LOT 4471-B",
    "SKU-RED-XL-001", "EAN 4006381333931", "ISBN 978-3-16-148410-0", "B07XJ8C8F5",
]  # fmt: skip

FREE_TEXT = [
    "Customer says the parcel never arrived",
    "Charged twice for the same order",
    "Refund requested: item arrived broken",
    "My order arrived broken",
    "Wants to cancel the subscription before renewal",
    "The customer is unhappy with the delay and asked for a manager",
    "Payment failed with card declined",
    "Address change: 12 Rue de Rivoli, 75001 Paris",
    "Escalating because the previous agent promised a callback",
    "Same issue as ticket CASE-00091337, still unresolved",
    "Unknown charge on statement dated 2026-01-04",
    "Late delivery, second time this month",
    "VIP account, handle with priority",
    "Needs invoice copy for tax purposes",
    "Wrong size delivered, wants exchange for XL",
    "Damaged packaging, product intact",
    "Requests GDPR data export",
    "Login fails after password reset",
    "Asked to speak to a human",
    "Disputes the late fee of 25 EUR",
    "Customer from Berlin wants a refund",
    "The user in Ohio reports a login loop",
    "Customer who called yesterday about the invoice",
    "Same-day delivery requested",
    "Previous order was never delivered",
    "His package was left outside",
    "Her account was locked after three attempts",
    "Their order shipped to the old address",
    "User mentioned a competitor offering a discount",
    "The customer mentioned she is moving abroad next month",
    "Customer mentioned a refund",
    "The user gave a wrong address before",
    "Order from last week never arrived",
]  # fmt: skip

ADDRESSES = [
    "221B Baker Street, London NW1 6XE", "1600 Amphitheatre Pkwy, Mountain View, CA 94043",
    "Unter den Linden 77, 10117 Berlin", "1-1 Chiyoda, Tokyo 100-8111", "Av. Paulista, 1578",
    "P.O. Box 1234", "Flat 3, 14 High St", "Calle Mayor 5, 28013 Madrid",
]  # fmt: skip

ALL = IDS + NAMES + EMAILS + ORDER_REFS + FREE_TEXT + ADDRESSES

PLACEHOLDERS = [
    "the user mentioned in the conversation", "his email", "the same amount as last time",
    "same as before", "<user_id>", "{{id}}", "{id}", "${USER_ID}", "[user id]", "TBD", "N/A",
    "n/a", "unknown", "", "   ", "null", "None", "undefined", "placeholder", "XXX-XXX-XXXX",
    "xxx@xxx.com", "her account number", "their order id", "the customer's email",
    "the customer", "the user", "the order we discussed", "the one mentioned above",
    "see above", "as discussed", "same", "the previous one", "previous amount",
    "the user from before", "it", "that one", "string", "?", "...", "to be determined",
    "same as last time", "the usual", "the email address the user gave earlier",
]  # fmt: skip

"""Static reference tables of the synthetic world: provinces, codes, categories, products.

Administrative codes are real-looking (most are the real GB/T 2260 codes of the named
district or county); the first two digits are the province's code, which is what ingestion
can check against the ``province`` column.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Province:
    """A province with a few city districts (urban) and counties (rural / county towns)."""

    name: str  # short name as partners write it, e.g. 河南
    full_name: str  # e.g. 河南省, used in co-op names
    weight: float  # share of the population (relative)
    crop_zone: str  # "north" (wheat/maize), "south" (rice) or "tea"
    districts: tuple[tuple[int, str], ...]
    counties: tuple[tuple[int, str], ...]


PROVINCES: tuple[Province, ...] = (
    Province("北京", "北京市", 1.5, "north",
             ((110101, "东城区"), (110105, "朝阳区"), (110108, "海淀区")),
             ((110117, "平谷区"), (110118, "密云区"), (110119, "延庆区"))),
    Province("天津", "天津市", 1.2, "north",
             ((120101, "和平区"), (120104, "南开区")), ((120118, "静海区"), (120119, "蓟州区"))),
    Province("河北", "河北省", 5.0, "north",
             ((130102, "长安区"), (130104, "桥西区")),
             ((130633, "易县"), (130627, "唐县"), (130925, "盐山县"))),
    Province("山西", "山西省", 2.5, "north",
             ((140105, "小店区"), (140106, "迎泽区")), ((140723, "和顺县"), (141023, "襄汾县"))),
    Province("内蒙古", "内蒙古自治区", 1.5, "north",
             ((150102, "新城区"), (150105, "赛罕区")),
             ((150121, "土默特左旗"), (150422, "巴林左旗"))),
    Province("辽宁", "辽宁省", 3.0, "north",
             ((210102, "和平区"), (210103, "沈河区")), ((210922, "彰武县"), (211421, "绥中县"))),
    Province("吉林", "吉林省", 2.0, "north",
             ((220102, "南关区"), (220104, "朝阳区")), ((220122, "农安县"), (220524, "柳河县"))),
    Province("黑龙江", "黑龙江省", 2.5, "north",
             ((230102, "道里区"), (230103, "南岗区")), ((230126, "巴彦县"), (230223, "依安县"))),
    Province("上海", "上海市", 1.8, "south",
             ((310101, "黄浦区"), (310115, "浦东新区")), ((310151, "崇明区"),)),
    Province("江苏", "江苏省", 6.0, "south",
             ((320102, "玄武区"), (320106, "鼓楼区")), ((320322, "沛县"), (321324, "泗洪县"))),
    Province("浙江", "浙江省", 4.5, "tea",
             ((330102, "上城区"), (330106, "西湖区")),
             ((330326, "平阳县"), (331022, "三门县"), (330727, "磐安县"))),
    Province("安徽", "安徽省", 5.0, "south",
             ((340102, "瑶海区"), (340104, "蜀山区")), ((341221, "临泉县"), (341623, "利辛县"))),
    Province("福建", "福建省", 3.5, "tea",
             ((350102, "鼓楼区"), (350104, "仓山区")),
             ((350322, "仙游县"), (350823, "上杭县"), (350524, "安溪县"))),
    Province("江西", "江西省", 3.5, "south",
             ((360102, "东湖区"), (360103, "西湖区")), ((360121, "南昌县"), (360731, "于都县"))),
    Province("山东", "山东省", 7.0, "north",
             ((370102, "历下区"), (370103, "市中区")), ((371322, "郯城县"), (371721, "曹县"))),
    Province("河南", "河南省", 7.0, "north",
             ((410102, "中原区"), (410105, "金水区")),
             ((410225, "兰考县"), (411627, "太康县"), (411723, "平舆县"))),
    Province("湖北", "湖北省", 4.5, "south",
             ((420102, "江岸区"), (420106, "武昌区")), ((421127, "黄梅县"), (420921, "孝昌县"))),
    Province("湖南", "湖南省", 5.0, "south",
             ((430102, "芙蓉区"), (430104, "岳麓区")), ((430521, "邵东县"), (431126, "宁远县"))),
    Province("广东", "广东省", 8.0, "south",
             ((440103, "荔湾区"), (440106, "天河区")), ((441521, "海丰县"), (445222, "揭西县"))),
    Province("广西", "广西壮族自治区", 4.0, "south",
             ((450102, "兴宁区"), (450103, "青秀区")), ((450821, "平南县"), (450722, "浦北县"))),
    Province("海南", "海南省", 1.0, "south",
             ((460105, "秀英区"), (460106, "龙华区")), ((469024, "临高县"), (469025, "定安县"))),
    Province("重庆", "重庆市", 3.0, "south",
             ((500103, "渝中区"), (500105, "江北区")), ((500229, "城口县"), (500235, "云阳县"))),
    Province("四川", "四川省", 7.0, "tea",
             ((510104, "锦江区"), (510107, "武侯区")),
             ((511622, "武胜县"), (511923, "平昌县"), (511826, "芦山县"))),
    Province("贵州", "贵州省", 3.0, "tea",
             ((520102, "南明区"), (520103, "云岩区")),
             ((522323, "普安县"), (520221, "水城县"), (522623, "施秉县"))),
    Province("云南", "云南省", 4.0, "tea",
             ((530102, "五华区"), (530103, "盘龙区")),
             ((530324, "罗平县"), (532524, "建水县"), (532822, "勐海县"))),
    Province("陕西", "陕西省", 3.5, "north",
             ((610102, "新城区"), (610113, "雁塔区")), ((610424, "乾县"), (610528, "富平县"))),
    Province("甘肃", "甘肃省", 2.5, "north",
             ((620102, "城关区"), (620105, "安宁区")), ((621121, "通渭县"), (620421, "靖远县"))),
    Province("宁夏", "宁夏回族自治区", 0.7, "north",
             ((640104, "兴庆区"), (640105, "西夏区")), ((640323, "盐池县"), (640522, "海原县"))),
    Province("新疆", "新疆维吾尔自治区", 2.0, "north",
             ((650102, "天山区"), (650104, "新市区")), ((652924, "沙雅县"), (652823, "尉犁县"))),
)

REGION_TYPES: tuple[str, ...] = ("rural", "county", "urban")
GENDERS: tuple[str, ...] = ("M", "F")
OCCUPATIONS: tuple[str, ...] = (
    "farmer", "small_business_owner", "gig_worker", "salaried", "retired",
)
FARMER, SMALL_BUSINESS, GIG, SALARIED, RETIRED = range(5)
INCOME_BANDS: tuple[str, ...] = ("low", "lower_middle", "middle", "upper_middle")
# Annual income (yuan) the lender assumes for a band when it relates a loan to income.
INCOME_BAND_YUAN: tuple[float, ...] = (24_000.0, 48_000.0, 90_000.0, 160_000.0)

AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("age_18_25", 18, 25), ("age_26_35", 26, 35), ("age_36_45", 36, 45),
    ("age_46_59", 46, 59), ("age_60_plus", 60, 200),
)

# Crops: yearly revenue per mu (yuan) and the share of a year's sales by calendar month.
CROPS: tuple[str, ...] = ("水稻", "小麦", "玉米", "蔬菜", "水果", "茶叶")
CROP_REVENUE_PER_MU: tuple[float, ...] = (1500.0, 1000.0, 1100.0, 4000.0, 5000.0, 6000.0)
CROP_HARVEST_MONTHS: tuple[tuple[float, ...], ...] = (
    # Jan  Feb  Mar  Apr  May  Jun  Jul  Aug  Sep  Oct  Nov  Dec
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.15, 0.25, 0.4, 0.0, 0.0),  # 水稻 (early + late rice)
    (0.0, 0.0, 0.0, 0.0, 0.1, 0.75, 0.15, 0.0, 0.0, 0.0, 0.0, 0.0),  # 小麦
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.5, 0.1, 0.0),  # 玉米
    (0.06, 0.05, 0.07, 0.09, 0.1, 0.1, 0.1, 0.1, 0.09, 0.09, 0.08, 0.07),  # 蔬菜
    (0.0, 0.0, 0.0, 0.0, 0.05, 0.1, 0.2, 0.25, 0.25, 0.15, 0.0, 0.0),  # 水果
    (0.0, 0.0, 0.15, 0.4, 0.25, 0.05, 0.05, 0.05, 0.05, 0.0, 0.0, 0.0),  # 茶叶
)
CROP_MIX_BY_ZONE: dict[str, tuple[float, ...]] = {
    "north": (0.03, 0.37, 0.33, 0.14, 0.13, 0.0),
    "south": (0.50, 0.05, 0.05, 0.2, 0.15, 0.05),
    "tea": (0.35, 0.05, 0.05, 0.15, 0.15, 0.25),
}
# Farmland protection subsidy (耕地地力保护补贴), paid once a year in this month (yuan/mu).
SUBSIDY_MONTH = 5
SUBSIDY_PER_MU = 110.0
COOP_NAME_WORDS: tuple[str, ...] = ("丰收", "绿源", "金穗", "兴农", "富民", "惠农", "长青", "红星")

ECOMMERCE_CATEGORIES: tuple[str, ...] = (
    "AGRI_INPUT", "GROCERY", "ELECTRONICS", "APPAREL", "HOUSEHOLD",
)
AGRI_INPUT, GROCERY, ELECTRONICS, APPAREL, HOUSEHOLD = range(5)
# Median order value (yuan) by category; order values are lognormal around it.
ECOMMERCE_MEDIAN_YUAN: tuple[float, ...] = (380.0, 65.0, 950.0, 160.0, 120.0)
# Agri-input buying season: spring planting and the autumn sowing of winter wheat.
AGRI_INPUT_SEASON: tuple[float, ...] = (
    0.4, 0.9, 2.2, 2.4, 1.6, 0.7, 0.5, 0.5, 1.2, 1.4, 0.5, 0.3,
)

TXN_TYPES: tuple[str, ...] = ("BILL_PAY", "TRANSFER_IN", "TRANSFER_OUT", "MERCHANT")
BILL_PAY, TRANSFER_IN, TRANSFER_OUT, MERCHANT = range(4)
TXN_MEDIAN_YUAN: tuple[float, ...] = (95.0, 420.0, 300.0, 48.0)
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "GROCERY", "RESTAURANT", "TRANSPORT", "PHARMACY", "AGRI_SUPPLY", "TELECOM", "EDUCATION",
)
TXN_STATUSES: tuple[str, ...] = ("SUCCESS", "FAILED")

SCENARIOS: tuple[str, ...] = ("ECOMMERCE", "WALLET", "COOP", "BRANCH")
ECOMMERCE, WALLET, COOP, BRANCH = range(4)

# The product shelf (mirrors configs/products.yaml): kind and the scenarios it is offered in.
PRODUCT_SCENARIOS: dict[str, tuple[str, ...]] = {
    "microloan": ("ECOMMERCE", "WALLET", "BRANCH"),
    "agri_loan": ("COOP", "ECOMMERCE", "BRANCH"),
    "business_loan": ("WALLET", "BRANCH"),
    "micro_insurance": ("WALLET", "ECOMMERCE"),
    "crop_insurance": ("COOP", "BRANCH"),
    "savings": ("WALLET", "BRANCH"),
    "bill_pay": ("WALLET",),
}
LOAN_PRODUCTS: tuple[str, ...] = ("microloan", "agri_loan", "business_loan")
DEFAULT_PRODUCTS: tuple[str, ...] = tuple(PRODUCT_SCENARIOS)
EVENT_TYPES: tuple[str, ...] = ("impression", "click", "application", "uptake")

# Mainland mobile prefixes in use (the first three digits).
MOBILE_PREFIXES: tuple[int, ...] = (
    130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 150, 151, 152, 153, 155, 156, 157,
    158, 159, 166, 173, 175, 176, 177, 178, 180, 181, 182, 183, 185, 186, 187, 188, 189,
    191, 198, 199,
)

# Relative activity by local hour of day, for payments/orders and for branch-hours events.
HOURLY_ACTIVITY: tuple[float, ...] = (
    0.3, 0.15, 0.1, 0.08, 0.1, 0.3, 0.8, 1.6, 2.2, 2.4, 2.3, 2.6,
    2.8, 2.4, 2.2, 2.2, 2.3, 2.5, 2.9, 3.2, 3.0, 2.4, 1.5, 0.7,
)
BUSINESS_HOURS: tuple[float, ...] = (
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.5, 1.5, 2.5, 2.6, 2.2,
    1.5, 1.8, 2.4, 2.4, 2.2, 1.6, 1.0, 0.9, 0.8, 0.6, 0.3, 0.1,
)
